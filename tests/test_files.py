"""Output files: --force checks, atomic replacement (nothing half-written, nothing left behind), permissions."""
import json
import os
import stat

import numpy as np
import pytest

from solov2.errors import SolovError
from solov2.files import UMASK, atomic_write, check_writable, write_image, write_json_atomic


def test_write_json_atomic(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(str(path), [1, 2, 3])        # replaces the old content
    assert json.loads(path.read_text()) == [1, 2, 3]
    assert os.listdir(tmp_path) == ["out.json"]    # no temporary left behind


def test_write_json_atomic_failure_keeps_old_file(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["out.json"]


def test_write_json_atomic_accepts_numpy_values(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"id": np.int64(3), "ap": np.float32(0.5), "s": np.arange(2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"id": 3, "ap": 0.5, "s": [0, 1]}


def test_json_is_shared_and_pictures_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "r.json", [1])
        write_image(tmp_path / "p.png", np.zeros((4, 4, 3), np.uint8))
        with atomic_write(tmp_path / "t.txt", mode=UMASK) as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)  # noqa: E731
    assert (mode("r.json"), mode("p.png"), mode("t.txt")) == (0o644, 0o640, 0o640)


def test_atomic_write_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_write_image_unknown_extension_writes_nothing(tmp_path):
    with pytest.raises(SolovError, match="x.nope: cannot write an image"):
        write_image(tmp_path / "x.nope", np.zeros((4, 4, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_check_writable(tmp_path):
    (tmp_path / "a").write_text("keep")
    with pytest.raises(SolovError, match=r"a: already exists; pass --force to overwrite it"):
        check_writable(tmp_path / "a", force=False)
    check_writable(tmp_path / "a", force=True)
    check_writable(tmp_path / "new", force=False)
    with pytest.raises(SolovError, match="nowhere: output folder does not exist"):
        check_writable(tmp_path / "nowhere" / "b", force=False)


def test_restored_on_failure_puts_back_only_what_the_block_replaced(tmp_path):
    """A sidecar replaced before the failing last step is put back (or removed if there was none); one that
    another run wrote before the block's replacing() (the re-check that then fails) is left alone."""
    from solov2.files import restored_on_failure
    side = tmp_path / "m.json"
    side.write_text("earlier")
    with pytest.raises(KeyboardInterrupt):
        with restored_on_failure(side) as replacing:
            replacing()
            side.write_text("new")
            raise KeyboardInterrupt   # the model's rename
    assert side.read_text() == "earlier"
    side.unlink()
    with pytest.raises(OSError):
        with restored_on_failure(side) as replacing:
            replacing()
            side.write_text("new")
            raise OSError("rename failed")
    assert not side.exists()
    with pytest.raises(RuntimeError):
        with restored_on_failure(side) as replacing:
            side.write_text("another run's")   # appears before this block replaces anything
            raise RuntimeError("already exists")
    assert side.read_text() == "another run's"
    with restored_on_failure(side) as replacing:   # success: the new content stays
        replacing()
        side.write_text("new")
    assert side.read_text() == "new"
