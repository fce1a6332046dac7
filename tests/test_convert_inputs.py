"""The converter on bad and hostile input (src/solov2/convert.py, src/solov2/torch_checkpoint.py, weight_convert.py):
files that are not checkpoints, code hidden in them (pickle payloads, TorchScript), tensors NumPy cannot hold,
architectures the model refuses, and its two output files (the checkpoint and its sidecar) on failure. Weights and
helpers: tests/test_convert.py."""
import collections
import json
import os
import sys

import numpy as np
import pytest

import torch  # noqa: E402  (in .[dev]: a broken install must fail, not skip)
import mindspore as ms  # noqa: E402

from solov2.convert import ConvertError, check_config, convert_checkpoint, infer_arch  # noqa: E402
from conftest import REPO, SHARED  # noqa: E402
from test_convert import (json_shapes, light_r18_cfg, official_pth, read_ckpt, reference,  # noqa: E402,F401
                          run_cli, to_mmdet3_key)


def assert_refused(src, dst, match, **kw):
    """convert_checkpoint raises a ConvertError matching `match` and leaves no DST / temp file behind."""
    before = set(os.listdir(os.path.dirname(dst)))
    with pytest.raises(ConvertError, match=match) as err:
        convert_checkpoint(str(src), str(dst), log=None, **kw)
    assert not os.path.exists(dst) and set(os.listdir(os.path.dirname(dst))) == before
    return str(err.value)


def test_cli_rejects_text_file(tmp_path):
    src = tmp_path / "notes.pth"
    src.write_text("this is not a checkpoint\n")
    res = run_cli(src, tmp_path / "x.ckpt")
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(src) in lines[0]
    assert "Traceback" not in res.stderr and not (tmp_path / "x.ckpt").exists()


@pytest.mark.parametrize("head", [b"", b"\x80\x02"])
def test_random_bytes_are_not_a_checkpoint(tmp_path, head):
    src = tmp_path / "random.pth"
    src.write_bytes(head + np.random.default_rng(5).integers(0, 255, 4096, dtype=np.uint8).tobytes()[len(head):])
    msg = assert_refused(src, tmp_path / "x.ckpt", "not a (readable )?PyTorch checkpoint")
    assert str(src) in msg


class HistoryBuffer:
    """Stands for mmengine.logging.HistoryBuffer: a class the converter cannot (and must not) import."""

    def __init__(self):
        self._log_history, self._count_history = np.arange(3.0), np.ones(3)


class Payload:
    """A malicious object: unpickling it would create the file `path` (and could run any command)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_real_mmengine_file_converts_and_runs_no_code(reference, tmp_path):
    """An mmdetection 3.x training file: meta with TorchVersion, message_hub with HistoryBuffer and numpy values,
    plus a __reduce__ payload; weights_only=True refuses it, the converter reads its tensors and nothing else."""
    sd, _, meta = reference
    mm = collections.OrderedDict((to_mmdet3_key(k), v) for k, v in sd.items())
    pwned = tmp_path / "pwned"
    classes = tuple(meta["checkpoint_meta_suggestion"]["CLASSES"])
    src = tmp_path / "epoch_36.pth"
    torch.save({"meta": {"dataset_meta": {"classes": classes}, "mmengine_version": "0.10.7",
                         "torch_version": torch.torch_version.TorchVersion("2.13.0"), "seed": np.int64(7)},
                "state_dict": mm, "message_hub": {"log_scalars": {"loss": HistoryBuffer()},
                                                  "runtime_info": {"iter": np.int64(100), "x": Payload(pwned)}}},
               src)
    with pytest.raises(Exception):  # the point of it: the plain safe loader cannot read this file
        torch.load(src, weights_only=True)
    assert not pwned.exists()
    summary = convert_checkpoint(str(src), str(tmp_path / "mm.ckpt"), config=light_r18_cfg(), log=None)
    assert not pwned.exists(), "code from the checkpoint ran"
    assert summary["layout"] == "mmdet3" and summary["classes"] == list(classes)
    assert set(read_ckpt(tmp_path / "mm.ckpt")) == set(read_ckpt(official_and_convert(reference, tmp_path)))


def official_and_convert(reference, tmp_path):
    sd, _, meta = reference
    convert_checkpoint(str(official_pth(tmp_path / "o.pth", sd, meta)), str(tmp_path / "o.ckpt"), log=None)
    return tmp_path / "o.ckpt"


def test_payload_inside_the_state_dict_is_refused_and_never_run(tmp_path):
    pwned = tmp_path / "pwned"
    torch.save({"state_dict": {"a.weight": torch.zeros(1), "b": Payload(pwned)}}, tmp_path / "evil.pth")
    assert_refused(tmp_path / "evil.pth", tmp_path / "x.ckpt", "not a state dict of tensors.*: b")
    assert not pwned.exists()


def test_torchscript_archive_is_refused_before_torch_runs_it(tmp_path, monkeypatch):
    """torch.load passes a zip with a constants.pkl record to torch.jit.load, which runs the archive's code,
    whatever pickle module it was given: such a file is refused before torch sees it."""
    class Doubler(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    src = tmp_path / "scripted.pth"
    torch.jit.save(torch.jit.script(Doubler()), str(src))
    pwned = tmp_path / "pwned"

    def jit_load(*args, **kwargs):   # stands for the archive's code running
        pwned.touch()
        raise RuntimeError("torch.jit.load ran")
    monkeypatch.setattr(torch.jit, "load", jit_load)
    assert_refused(src, tmp_path / "x.ckpt", "scripted.pth: a TorchScript archive")
    assert not pwned.exists()


@pytest.mark.parametrize("tensor, kind", [(lambda: torch.zeros(2, 2).to_sparse(), "torch.sparse_coo"),
                                          (lambda: torch.empty(2, 2, device="meta"), r"meta \(no data\)")])
def test_a_tensor_numpy_cannot_hold_is_named(tmp_path, tensor, kind):
    torch.save({"state_dict": {"a.weight": torch.zeros(1), "b.weight": tensor()}}, tmp_path / "odd.pth")
    assert_refused(tmp_path / "odd.pth", tmp_path / "x.ckpt", f"odd.pth: key 'b.weight' is a {kind} tensor")


def test_not_a_dict_of_tensors(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    assert_refused(tmp_path / "list.pth", tmp_path / "x.ckpt", "list.pth: not a checkpoint dict")
    torch.save({"state_dict": {"a.weight": torch.zeros(1), "b": 3}}, tmp_path / "mixed.pth")
    assert_refused(tmp_path / "mixed.pth", tmp_path / "x.ckpt", "not a state dict of tensors.*: b")
    torch.save({"layer.weight": torch.zeros(1)}, tmp_path / "other.pth")
    assert_refused(tmp_path / "other.pth", tmp_path / "x.ckpt", "other.pth: not a SOLOv2 state dict")


def test_missing_extra_and_misshaped_keys(reference, tmp_path):
    sd, _, meta = reference
    missing = collections.OrderedDict((k, v) for k, v in sd.items() if k != "bbox_head.kernel_convs.1.gn.weight")
    msg = assert_refused(official_pth(tmp_path / "m.pth", missing, meta), tmp_path / "x.ckpt", "1 missing")
    assert "bbox_head.kernel_convs.1.gn.gamma" in msg and "m.pth" in msg
    extra = collections.OrderedDict(sd, **{"bbox_head.extra_conv.weight": torch.zeros(3, 3)})
    msg = assert_refused(official_pth(tmp_path / "e.pth", extra, meta), tmp_path / "x.ckpt", "1 unused")
    assert "bbox_head.extra_conv.weight" in msg
    bad = collections.OrderedDict(sd, **{"neck.fpn_convs.0.conv.bias": torch.zeros(255)})
    msg = assert_refused(official_pth(tmp_path / "s.pth", bad, meta), tmp_path / "x.ckpt", "1 shape mismatches")
    assert "neck.fpn_convs.0.conv.bias (255,) vs model (256,)" in msg


def test_config_mismatch_is_named(reference, tmp_path):
    sd, _, meta = reference
    src = official_pth(tmp_path / "c.pth", sd, meta)
    assert_refused(src, tmp_path / "x.ckpt", "checkpoint has 22 classes, config expects 80",
                   config=light_r18_cfg(num_classes=81))
    assert_refused(src, tmp_path / "x.ckpt", "ResNet-18 checkpoint, config is ResNet-101",
                   config=light_r18_cfg(depth=101))


def test_dcn_key_on_a_basic_block_is_refused(reference, tmp_path):
    sd, _, meta = reference
    dcn = collections.OrderedDict(sd, **{"backbone.layer3.0.conv2.conv_offset.weight": torch.zeros(27, 256, 3, 3)})
    msg = assert_refused(official_pth(tmp_path / "d.pth", dcn, meta), tmp_path / "x.ckpt",
                         "backbone.layer3: only some blocks have a deformable conv2")
    assert msg.startswith(str(tmp_path / "d.pth"))


def test_dcn_on_every_basic_block_of_a_stage_is_one_line(reference, tmp_path):
    """Consistent within the stage, so the architecture is inferred; the model then refuses deformable BasicBlocks:
    a ConvertError naming the file and the architecture, not the model's ValueError."""
    sd, _, meta = reference
    offsets = {f"backbone.layer3.{i}.conv2.conv_offset.{k}": torch.zeros(*shape)
               for i in (0, 1) for k, shape in (("weight", (27, 256, 3, 3)), ("bias", (27,)))}
    dcn = collections.OrderedDict(sd, **offsets)
    msg = assert_refused(official_pth(tmp_path / "d.pth", dcn, meta), tmp_path / "x.ckpt",
                         "cannot be built: .*BasicBlock")
    assert msg.startswith(f"{tmp_path / 'd.pth'}: its architecture (")


def test_dcn_checkpoint_against_a_plain_config_is_named():
    from solov2.config import load_config
    shapes = {k: tuple(s) for k, s, _ in
              json.loads((SHARED / "fixtures" / "solov2_r101_dcn_official_keys.json").read_text())["keys"]}
    arch = infer_arch({k: v for k, v in shapes.items() if not k.endswith("num_batches_tracked")})
    with pytest.raises(ConvertError) as err:
        check_config(arch, load_config(REPO / "configs" / "solov2" / "solov2_r101_fpn_8gpu_3x.py"), "d.pth")
    msg = str(err.value)
    assert "checkpoint backbone deformable conv2 (type, stages) is ('DCNv2', (False, True, True, True)), config " \
           "expects (None, (False, False, False, False))" in msg
    assert "bbox_head deformable tower convs (type, which) are ('DCNv2', 'all'), config expects (None, None)" in msg
    light = load_config(REPO / "configs" / "solov2" / "solov2_light_512_dcn_r50_fpn_8gpu_3x.py")
    check_config(infer_arch({k: v for k, v in json_shapes("solov2_light_512_dcn_r50_official_keys.json").items()
                             if not k.endswith("num_batches_tracked")}), light)   # the matching pair passes


def test_existing_dst_needs_force(reference, tmp_path):
    sd, _, meta = reference
    src = official_pth(tmp_path / "f.pth", sd, meta)
    dst = tmp_path / "f.ckpt"
    dst.write_bytes(b"keep me")
    res = run_cli(src, dst)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"error: {dst}: already exists; pass --force") and dst.read_bytes() == b"keep me"
    res = run_cli(src, dst, "--force")
    assert res.returncode == 0, res.stderr
    assert "layout: official" in res.stdout and len(read_ckpt(dst)) == 156


def test_failed_write_leaves_nothing_behind(reference, tmp_path, monkeypatch):
    sd, _, meta = reference
    src = official_pth(tmp_path / "w.pth", sd, meta)

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(ms, "save_checkpoint", broken_save)
    assert_refused(src, tmp_path / "w.ckpt", "could not write the checkpoint.*disk full")


def test_a_failed_rename_over_an_earlier_pair_keeps_it_whole(reference, tmp_path, monkeypatch):
    """--force over an earlier checkpoint + sidecar: when the new checkpoint cannot be renamed into place (the last
    step; Ctrl-C there), the earlier pair stays as it was: never the new class names beside the old weights."""
    import solov2.files
    sd, _, meta = reference
    src = official_pth(tmp_path / "w.pth", sd, meta)
    dst = tmp_path / "w.ckpt"
    dst.write_bytes(b"earlier weights")
    (tmp_path / "w.ckpt.json").write_text('{"earlier": "sidecar"}')
    replace = os.replace

    def interrupted(a, b):
        if str(b) == str(dst):
            raise KeyboardInterrupt
        return replace(a, b)
    monkeypatch.setattr(solov2.files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(str(src), str(dst), force=True, log=None)
    assert dst.read_bytes() == b"earlier weights"
    assert (tmp_path / "w.ckpt.json").read_text() == '{"earlier": "sidecar"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.ckpt", "w.ckpt.json", "w.pth"]


def test_the_api_takes_pathlib_paths(reference, tmp_path):
    """convert_checkpoint(Path, Path, config=Path): the config is read and checked as a string path would be."""
    sd, _, meta = reference
    src = official_pth(tmp_path / "p.pth", sd, meta)
    cfg = REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x_trashcan.py"
    summary = convert_checkpoint(src, tmp_path / "p.ckpt", config=cfg, log=None)
    assert (tmp_path / "p.ckpt").is_file() and "trashcan" in str(summary)
    with pytest.raises(ConvertError, match="config expects 80"):
        convert_checkpoint(src, tmp_path / "q.ckpt", config=REPO / "configs" / "solov2" /
                           "solov2_light_448_r18_fpn_8gpu_3x.py", log=None)


def test_two_keys_for_one_mindspore_parameter_are_refused(reference, tmp_path):
    """`gn.weight` and `gn.gamma` both become MindSpore's `gn.gamma`: neither may silently win."""
    sd, _, meta = reference
    key = next(k for k in sd if k.endswith("gn.weight"))
    src = official_pth(tmp_path / "d.pth", dict(sd, **{key[:-len("weight")] + "gamma": sd[key]}), meta)
    assert_refused(src, tmp_path / "d.ckpt", f"two keys map to the MindSpore parameter '{key[:-6]}gamma'")


def test_a_folder_as_destination_is_refused_even_with_force(reference, tmp_path):
    sd, _, meta = reference
    (tmp_path / "out.ckpt").mkdir()
    src = official_pth(tmp_path / "w.pth", sd, meta)
    with pytest.raises(ConvertError, match="out.ckpt: is a folder, not a file"):
        convert_checkpoint(str(src), str(tmp_path / "out.ckpt"), force=True, log=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ckpt", "w.pth"]   # no sidecar written beside it


def test_torch_forced_to_weights_only_is_named_not_the_file(reference, tmp_path, monkeypatch):
    sd, _, meta = reference
    src = official_pth(tmp_path / "w.pth", sd, meta)
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    msg = assert_refused(src, tmp_path / "w.ckpt", "TORCH_FORCE_WEIGHTS_ONLY_LOAD is set")
    assert "w.pth" not in msg


def test_missing_torch_gives_install_hint(tmp_path, monkeypatch):
    src = tmp_path / "a.pth"
    torch.save({"a": torch.zeros(1)}, src)
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert_refused(src, tmp_path / "x.ckpt", r"pip install 'torch==2\.13\.0'")


def test_bad_destination(tmp_path):
    with pytest.raises(ConvertError, match="must end in .ckpt"):
        convert_checkpoint("a.pth", str(tmp_path / "out.bin"), log=None)
    with pytest.raises(ConvertError, match="output folder does not exist"):
        convert_checkpoint("a.pth", str(tmp_path / "no" / "out.ckpt"), log=None)


def test_cli_checks_config_file(reference, tmp_path):
    cfg = REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x.py"
    if not cfg.is_file():
        pytest.skip(f"{cfg} not in the repo yet")
    sd, _, meta = reference
    src = official_pth(tmp_path / "c.pth", sd, meta)
    res = run_cli(src, tmp_path / "c.ckpt", "--config", cfg)  # official config: 81 = 80 classes + background
    assert res.returncode == 2 and not (tmp_path / "c.ckpt").exists()
    assert res.stderr.strip() == (f"error: {src}: checkpoint does not match the config ({cfg}): "
                                  "checkpoint has 22 classes, config expects 80")
    trashcan = cfg.with_name("solov2_light_448_r18_fpn_8gpu_3x_trashcan.py")  # 23 = 22 TrashCan classes + 1
    if trashcan.is_file():
        summary = convert_checkpoint(str(src), str(tmp_path / "t.ckpt"), config=str(trashcan), log=None)
        assert summary["config"] == f"checked against {trashcan}" and summary["num_tensors"] == 156


def test_shapes_no_solov2_layer_has_are_one_line(reference, tmp_path):
    """A class conv of shape (80,) or a conv with a zero-size dimension: named, not an IndexError traceback."""
    sd, _, meta = reference
    for name, bad in (("flat.pth", {"bbox_head.solo_cate.weight": torch.zeros(22)}),
                      ("empty.pth", {"backbone.layer1.0.conv2.weight": torch.zeros(64, 0, 3, 3)})):
        src = official_pth(tmp_path / name, collections.OrderedDict(sd, **bad), meta)
        assert_refused(src, tmp_path / "x.ckpt", f"{name}: (a convolution weight has a shape no SOLOv2 layer has"
                                                 "|does not fit the model)")


def test_a_state_dict_without_a_backbone_is_named(reference, tmp_path):
    sd, _, meta = reference
    mm = collections.OrderedDict((to_mmdet3_key(k), v) for k, v in sd.items() if not k.startswith("backbone."))
    torch.save({"state_dict": mm}, tmp_path / "head.pth")
    assert_refused(tmp_path / "head.pth", tmp_path / "x.ckpt", r"head.pth: no backbone\.\* keys")
