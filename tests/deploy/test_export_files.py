"""export.py's two output files (the model and its sidecar) on failure: an earlier export stays usable."""
import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from solov2.deploy import export


def _earlier_export(tmp_path):
    out, side, new = tmp_path / "m.onnx", tmp_path / "m.onnx.json", tmp_path / "new.onnx"
    out.write_bytes(b"earlier model")
    side.write_text('{"earlier": 1}\n')
    new.write_bytes(b"new model")
    return out, side, new


def test_a_failed_copy_leaves_the_earlier_model_and_sidecar(tmp_path, monkeypatch):
    """export.py --force over an earlier export, the disk full while the model is copied: both earlier files are
    kept as they were (the sidecar used to be deleted, leaving the earlier model unusable) and no temporary."""
    out, side, new = _earlier_export(tmp_path)

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))
    monkeypatch.setattr(export.shutil, "copyfile", full_disk)
    with pytest.raises(OSError):
        export.install(new, out, {"new": 1})
    assert out.read_bytes() == b"earlier model" and side.read_text() == '{"earlier": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json", "new.onnx"]


def test_a_model_that_cannot_be_renamed_leaves_the_earlier_pair(tmp_path, monkeypatch):
    """The last step, the model's rename, fails after the new sidecar replaced the earlier one: the earlier sidecar
    is put back (never the new one beside the earlier model, nor the earlier model without one)."""
    out, side, new = _earlier_export(tmp_path)
    rename = os.replace

    def failing_for_the_model(src, dst):
        if Path(dst) == out:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return rename(src, dst)
    monkeypatch.setattr(os, "replace", failing_for_the_model)
    with pytest.raises(OSError):
        export.install(new, out, {"new": 1})
    monkeypatch.undo()
    assert out.read_bytes() == b"earlier model" and side.read_text() == '{"earlier": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json", "new.onnx"]


def test_install_writes_the_model_and_its_digest(tmp_path):
    out, side, new = _earlier_export(tmp_path)
    export.install(new, out, {"new": 1})
    assert out.read_bytes() == b"new model"
    assert json.loads(side.read_text()) == {"new": 1, "model_sha256": hashlib.sha256(b"new model").hexdigest()}
