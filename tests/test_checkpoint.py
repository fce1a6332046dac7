"""MindSpore 2.10 refuses a .ckpt larger than *free* memory (page cache excluded): our loader must not."""
import os

import mindspore as ms
import numpy as np
import pytest

from solov2 import checkpoint
from solov2.engine import snapshot
from solov2.errors import SolovError

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def little_free_memory(monkeypatch):
    """MemFree as on a machine whose RAM is mostly page cache: 64 KB free."""
    real = os.sysconf

    def sysconf(name):
        return 64 * 1024 // PAGE if name == "SC_AVPHYS_PAGES" else real(name)
    monkeypatch.setattr(os, "sysconf", sysconf)


def write_snapshot(path, epoch):
    params = {"w": np.arange(100_000, dtype=np.float32), "global_step": np.array([7], np.int32)}
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], str(path),
                       append_dict={"epoch": epoch, "seed": 0})


def test_free_memory_check_counts_page_cache(tmp_path, little_free_memory):
    path = tmp_path / "epoch_2.ckpt"                       # ~400 KB > the 64 KB "free"
    write_snapshot(path, 2)
    with pytest.raises(ValueError, match="available memory"):
        ms.load_checkpoint(str(path))                      # the MindSpore trap this guards against
    got = checkpoint.read_checkpoint(path)
    np.testing.assert_array_equal(got["w"].asnumpy(), np.arange(100_000, dtype=np.float32))
    # resume must pick the newest snapshot, not skip it as "unreadable"
    write_snapshot(tmp_path / "epoch_1.ckpt", 1)
    assert snapshot.latest_valid_snapshot(tmp_path) == path
    assert checkpoint.load_checkpoint(path, choice_func=lambda n: n == "epoch")["epoch"].asnumpy() == 2


def test_really_low_memory_stops_resume_instead_of_using_an_older_snapshot(tmp_path, little_free_memory,
                                                                          monkeypatch):
    monkeypatch.setattr(checkpoint, "_mem_available", lambda: 64 * 1024)
    write_snapshot(tmp_path / "epoch_1.ckpt", 1)
    write_snapshot(tmp_path / "epoch_2.ckpt", 2)
    with pytest.raises(SolovError, match="epoch_2.ckpt: .*memory"):
        snapshot.latest_valid_snapshot(tmp_path)
