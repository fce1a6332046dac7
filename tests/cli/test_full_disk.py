"""A checkpoint save on a full disk: a one-line error naming the disk, and no partial file left behind.

MindSpore writes X.ckpt through X.tmp; on a full disk it raises OSError(ENOSPC) and leaves X.tmp (seen here on a
1 MB tmpfs). The first test mounts such a tmpfs when the machine allows it (root); the second fakes exactly that
behaviour, so the cleanup is tested everywhere.
"""
import errno
import os

import mindspore as ms
import numpy as np
import pytest
from conftest import small_tmpfs

from solov2.convert import save_mindspore_checkpoint
from solov2.errors import SolovError
from solov2.engine.snapshot import save_snapshot


class Net(ms.nn.Cell):
    def __init__(self, n=1000):
        super().__init__()
        self.w = ms.Parameter(ms.Tensor(np.ones((n, n), np.float32)), name="w")  # 4 MB

    def construct(self, x):
        return x * self.w


def save_both(folder):
    """Try a snapshot and a converted checkpoint into folder; returns the two errors."""
    net = Net()
    opt = ms.nn.SGD(net.trainable_params(), learning_rate=0.1, momentum=0.9)
    errors = []
    for save in (lambda: save_snapshot(folder / "epoch_1.ckpt", net, opt, epoch=1, seed=0),
                 lambda: save_mindspore_checkpoint({"w": np.ones((1000, 1000), np.float32)},
                                                   str(folder / "model.ckpt"), {"classes": []}, force=False)):
        with pytest.raises(SolovError) as e:
            save()
        errors.append(str(e.value))
    return errors


def test_real_full_disk(tmp_path):
    with small_tmpfs(tmp_path / "disk") as disk:  # where mounting is not allowed, the fake below covers it
        errors = save_both(disk)
        assert os.listdir(disk) == [], os.listdir(disk)
    for e in errors:
        assert "no space left on the disk" in e, e


def test_fake_full_disk_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(items, name, **kwargs):
        stem = os.path.splitext(name)[0]
        with open(stem + ".tmp", "wb") as f:  # what MindSpore leaves behind
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ms, "save_checkpoint", full_disk)
    errors = save_both(tmp_path)
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    assert "epoch_1.ckpt: no space left on the disk" in errors[0]
    assert "model.ckpt: no space left on the disk" in errors[1]
