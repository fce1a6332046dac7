"""Tests of the .pth -> .ckpt converter (src/solov2/convert.py, weight_convert.py).

Weights: shared/fixtures/reference/weights_light_r18_c23.npz (official light-448 R18, 23 classes, fp16 values)
turned into an official-layout .pth by the README §3 recipe. The mmdetection and pytorch_solov2 files are the
same weights re-keyed with the names of those code bases (written out here independently of the converter).
"""
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import mindspore as ms  # noqa: E402

from solov2.config import BackboneConfig, HeadConfig, MaskFeatConfig, NeckConfig, SOLOv2Config  # noqa: E402
from solov2.convert import (ConvertError, check_config, config_from_arch, convert_checkpoint, detect_layout,  # noqa: E402
                            infer_arch, model_parameter_shapes, official_to_mindspore_name, to_official,
                            verify_names_and_shapes)
from solov2.models import build_model  # noqa: E402
from conftest import REPO, SHARED, official_name_of

REF = SHARED / "fixtures" / "reference"
if not (REF / "meta.json").is_file():
    pytest.fail(f"shared fixtures not found under {SHARED} (set SOLOV2_SHARED)", pytrace=False)


def light_r18_cfg(num_classes=23, depth=18):
    """The fixture model: official light-448 R18 with 22 foreground classes."""
    return SOLOv2Config(backbone=BackboneConfig(depth=depth), neck=NeckConfig(in_channels=(64, 128, 256, 512)),
                        head=HeadConfig(num_classes=num_classes, stacked_convs=2, seg_feat_channels=256,
                                        ins_out_channels=128),
                        mask_feat=MaskFeatConfig(num_classes=128), source="test light r18")


@pytest.fixture(scope="module")
def reference():
    """(official OrderedDict of torch tensors incl. num_batches_tracked, npz as fp32 dict, meta.json)."""
    meta = json.loads((REF / "meta.json").read_text())
    npz = np.load(REF / "weights_light_r18_c23.npz")
    fp32 = {k: npz[k].astype(np.float32) for k in npz.files}
    sd = collections.OrderedDict()
    for key, _shape, _dtype in meta["key_order"]:
        sd[key] = torch.tensor(0) if key.endswith("num_batches_tracked") else torch.from_numpy(fp32[key])
    return sd, fp32, meta


def official_pth(path, sd, meta, **extra):
    """mmcv 0.2.16-style checkpoint: meta + state_dict + an SGD optimizer entry."""
    ckpt = {"meta": meta["checkpoint_meta_suggestion"], "state_dict": sd,
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                          "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0]}]}}
    ckpt.update(extra)
    torch.save(ckpt, path)
    return path


def to_mmdet3_key(key):
    """Official key -> mmdetection 2.x/3.x SOLOv2 key (SOLOV2Head + MaskFeatModule, ConvModule .conv/.gn)."""
    for old, new in (("bbox_head.cate_convs.", "mask_head.cls_convs."),
                     ("bbox_head.kernel_convs.", "mask_head.kernel_convs."),
                     ("bbox_head.solo_cate.", "mask_head.conv_cls."),
                     ("bbox_head.solo_kernel.", "mask_head.conv_kernel."),
                     ("mask_feat_head.conv_pred.0.", "mask_head.mask_feature_head.conv_pred."),
                     ("mask_feat_head.", "mask_head.mask_feature_head.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def to_pytorch_solov2_key(key):
    """Official key -> OpenFirework/pytorch_solov2 key (plain FPN convs, Sequential(conv, GN, ReLU) towers)."""
    if key.startswith("neck."):
        return "fpn." + key[len("neck."):].replace(".conv.", ".")
    if key.startswith(("mask_feat_head.", "bbox_head.")):
        key = key.replace("conv_pred.0.conv.", "conv_pred.0.").replace("conv_pred.0.gn.", "conv_pred.1.")
        return key.replace(".conv.weight", ".0.weight").replace(".gn.", ".1.")
    return key


def read_ckpt(path):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "weight_convert.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------------------------- conversions

def test_official_pth_converts_and_loads_into_model(reference, tmp_path):
    sd, fp32, meta = reference
    src = official_pth(tmp_path / "official.pth", sd, meta)
    dst = tmp_path / "out.ckpt"
    summary = convert_checkpoint(str(src), str(dst), config=light_r18_cfg(), log=None)
    assert summary["layout"] == "official" and summary["container"] == "state_dict"
    assert summary["skipped_num_batches_tracked"] == 20 and summary["ignored_entries"] == ["meta", "optimizer"]
    assert summary["num_tensors"] == 156 and summary["num_parameters"] == 18147670  # README §3 count
    assert summary["arch"]["depth"] == 18 and summary["arch"]["num_classes"] == 23

    net = build_model(light_r18_cfg())
    not_loaded, unused = ms.load_param_into_net(net, ms.load_checkpoint(str(dst)))
    assert not_loaded == [] and unused == []
    for name, param in net.parameters_and_names():
        value = param.asnumpy()
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, fp32[official_name_of(name)], err_msg=name)

    side = json.loads(Path(str(dst) + ".json").read_text())
    assert side["classes"] == meta["checkpoint_meta_suggestion"]["CLASSES"]
    assert side["layout"] == "official" and side["arch"]["ins_out_channels"] == 128
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_mmdet3_and_pytorch_solov2_layouts_give_identical_ckpt(reference, tmp_path):
    sd, _, meta = reference
    official = convert_checkpoint(str(official_pth(tmp_path / "o.pth", sd, meta)), str(tmp_path / "o.ckpt"),
                                  log=None)
    assert official["config"] == "inferred from the checkpoint"
    classes = tuple(meta["checkpoint_meta_suggestion"]["CLASSES"])
    # mmengine-style file, keys in reverse order (renaming must go by name, not position)
    mm = collections.OrderedDict((to_mmdet3_key(k), v) for k, v in reversed(list(sd.items())))
    torch.save({"meta": {"dataset_meta": {"classes": classes}, "epoch": 36}, "state_dict": mm,
                "message_hub": {"runtime_info": {"epoch": 36}}, "param_schedulers": [{"last_epoch": 36}]},
               tmp_path / "mm.pth")
    # pytorch_solov2 saves model.state_dict() bare; here as if wrapped in DataParallel ('module.' prefix)
    pt = collections.OrderedDict(("module." + to_pytorch_solov2_key(k), v) for k, v in sd.items())
    torch.save(pt, tmp_path / "pt.pth")

    s_mm = convert_checkpoint(str(tmp_path / "mm.pth"), str(tmp_path / "mm.ckpt"), config=light_r18_cfg(), log=None)
    s_pt = convert_checkpoint(str(tmp_path / "pt.pth"), str(tmp_path / "pt.ckpt"), log=None)
    assert (s_mm["layout"], s_pt["layout"]) == ("mmdet3", "pytorch_solov2")
    assert s_mm["classes"] == list(classes) and s_pt["classes"] is None
    assert s_mm["ignored_entries"] == ["message_hub", "meta", "param_schedulers"]
    assert s_pt["container"] == "bare" and s_pt["skipped_num_batches_tracked"] == 20
    ref = read_ckpt(tmp_path / "o.ckpt")
    for name in ("mm", "pt"):
        got = read_ckpt(tmp_path / f"{name}.ckpt")
        assert list(got) == list(ref)
        for key in ref:
            assert got[key].dtype == ref[key].dtype and np.array_equal(got[key], ref[key]), (name, key)


def test_fp16_checkpoint_is_cast_to_fp32(reference, tmp_path):
    sd, fp32, meta = reference
    half = collections.OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items())
    summary = convert_checkpoint(str(official_pth(tmp_path / "h.pth", half, meta)), str(tmp_path / "h.ckpt"),
                                 log=None)
    assert any("156 float16" in n for n in summary["notes"])
    got = read_ckpt(tmp_path / "h.ckpt")
    assert got["bbox_head.solo_cate.weight"].dtype == np.float32
    np.testing.assert_array_equal(got["backbone.bn1.moving_variance"], fp32["backbone.bn1.running_var"])


# ------------------------------------------------------------------------------ official key fixtures (no weights)

@pytest.mark.parametrize("fixture, depth, e, stacked, width", [
    ("solov2_r101_official_keys.json", 101, 256, 4, 512),
    ("solov2_light_r50_official_keys.json", 50, 128, 2, 256),
    ("solov2_light_448_r18_official_keys.json", 18, 128, 2, 256),
])
def test_renaming_covers_every_official_key(fixture, depth, e, stacked, width):
    keys = json.loads((SHARED / "fixtures" / fixture).read_text())["keys"]
    shapes = {k: tuple(s) for k, s, _ in keys}
    for layout, rekey in (("official", str), ("mmdet3", to_mmdet3_key), ("pytorch_solov2", to_pytorch_solov2_key)):
        if layout == "pytorch_solov2" and e != 128:
            continue  # pytorch_solov2 builds conv_pred's GN with out_channels: only valid for E = 128
        renamed = {rekey(k): np.empty(0) for k in shapes}
        assert detect_layout(list(renamed)) == layout
        back, dropped = to_official(renamed, layout)
        assert set(back) == {k for k in shapes if not k.endswith("num_batches_tracked")}, layout
        assert dropped == sum(k.endswith("num_batches_tracked") for k in shapes)
    official, _ = to_official(dict.fromkeys(shapes), "official")
    arch = infer_arch({k: shapes[k] for k in official})
    assert (arch["depth"], arch["ins_out_channels"], arch["stacked_convs"], arch["seg_feat_channels"],
            arch["num_classes"]) == (depth, e, stacked, width, 81)
    ms_names = [official_to_mindspore_name(k) for k in official]
    assert len(set(ms_names)) == len(ms_names)
    assert not [n for n in ms_names if "running_" in n or n.endswith((".gn.weight", ".gn.bias", "bn1.weight"))]
    # the real MindSpore model has exactly these names and shapes
    expected = model_parameter_shapes(config_from_arch(arch))
    verify_names_and_shapes({official_to_mindspore_name(k): np.empty(shapes[k]) for k in official}, expected)


DCN3 = [False, True, True, True]


def x101_dcn_keys():
    """ResNeXt-101 64x4d DCN keys (no fixture exists): from the independent torch model of tests/models."""
    sys.path.insert(0, str(Path(__file__).parent / "models"))
    import torch_solov2
    net = torch_solov2.SOLOv2(depth=101, groups=64, base_width=4, backbone_dcn="DCNv2", stage_with_dcn=DCN3,
                              head_dcn="DCNv2", mask_dcn="DCNv2")
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name, dcn", [
    ("solov2_r101_dcn_official_keys.json", dict(groups=1, backbone_dcn="DCNv2", head_dcn="DCNv2",
                                                head_dcn_all_convs=True, mask_feat_dcn="DCNv2")),
    ("solov2_light_512_dcn_r50_official_keys.json", dict(groups=1, backbone_dcn="DCN", head_dcn="DCN",
                                                         head_dcn_all_convs=False, mask_feat_dcn=None)),
    ("x101_dcn", dict(groups=64, base_width=4, backbone_dcn="DCNv2", head_dcn="DCNv2", head_dcn_all_convs=True,
                      mask_feat_dcn="DCNv2")),
])
def test_dcn_keys_convert_by_name(name, dcn):
    """Every DCN key (conv_offset of backbone conv2, tower convs, mask-feature convs incl. the 1x1 conv_pred) is
    renamed from the official and mmdetection layouts and fits the model built from the inferred architecture."""
    shapes = x101_dcn_keys() if name == "x101_dcn" else \
        {k: tuple(s) for k, s, _ in json.loads((SHARED / "fixtures" / name).read_text())["keys"]}
    assert any(".conv_pred.0.conv.conv_offset." in k for k in shapes) == (dcn["mask_feat_dcn"] is not None)
    for layout, rekey in (("official", str), ("mmdet3", to_mmdet3_key)):
        back, _ = to_official({rekey(k): np.empty(0) for k in shapes}, layout)
        assert set(back) == {k for k in shapes if not k.endswith("num_batches_tracked")}, layout
    official = {k: v for k, v in shapes.items() if not k.endswith("num_batches_tracked")}
    arch = infer_arch(official)
    assert {k: arch[k] for k in dcn} == dcn and arch["stage_with_dcn"] == DCN3
    expected = model_parameter_shapes(config_from_arch(arch))
    verify_names_and_shapes({official_to_mindspore_name(k): np.empty(v) for k, v in official.items()}, expected)
    assert sum("conv_offset" in k for k in expected) == sum("conv_offset" in k for k in official)


def test_missing_resnext_width_key_is_named():
    shapes = {k: v for k, v in json_shapes("solov2_r101_dcn_official_keys.json").items()
              if k != "backbone.layer1.0.conv2.weight"}
    with pytest.raises(ConvertError, match="d.pth: missing key 'backbone.layer1.0.conv2.weight'"):
        infer_arch(shapes, "d.pth")


def test_unsupported_dcn_placements_are_named():
    shapes = {k: tuple(s) for k, s, _ in
              json.loads((SHARED / "fixtures" / "solov2_r101_dcn_official_keys.json").read_text())["keys"]}
    some = {k: v for k, v in shapes.items() if not k.startswith("backbone.layer3.1.conv2.conv_offset")}
    with pytest.raises(ConvertError, match="backbone.layer3: only some blocks have a deformable conv2"):
        infer_arch(some, "d.pth")
    tower = {k: v for k, v in shapes.items() if not k.startswith("bbox_head.cate_convs.1.conv.conv_offset")}
    with pytest.raises(ConvertError, match="d.pth: unsupported placement of deformable convs in bbox_head"):
        infer_arch(tower, "d.pth")
    mixed = dict(shapes, **{"bbox_head.cate_convs.0.conv.conv_offset.weight": (18, 256, 3, 3)})
    with pytest.raises(ConvertError, match=r"deformable convolutions in bbox_head: types \['DCN', 'DCNv2'\] mixed"):
        infer_arch(mixed, "d.pth")
    odd = dict(shapes, **{"mask_feat_head.conv_pred.0.conv.conv_offset.weight": (5, 128, 1, 1)})
    with pytest.raises(ConvertError, match="mask_feat_head.conv_pred.0.conv: 5 offset channels"):
        infer_arch(odd, "d.pth")


# -------------------------------------------------------------------------------------------------- errors

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


def json_shapes(name):
    return {k: tuple(s) for k, s, _ in json.loads((SHARED / "fixtures" / name).read_text())["keys"]}


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
