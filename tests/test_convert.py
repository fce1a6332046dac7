"""Tests of the .pth -> .ckpt converter (src/solov2/convert.py, weight_convert.py).

Weights: shared/fixtures/reference/weights_light_r18_c23.npz (official light-448 R18, 23 classes, fp16 values)
turned into an official-layout .pth by the README §3 recipe. The mmdetection and pytorch_solov2 files are the
same weights re-keyed with the names of those code bases (written out here independently of the converter).
"""
import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch  # noqa: E402  (in .[dev]: a broken install must fail, not skip)
import mindspore as ms  # noqa: E402

from solov2.config import BackboneConfig, HeadConfig, MaskFeatConfig, NeckConfig, SOLOv2Config  # noqa: E402
from solov2.convert import (ConvertError, config_from_arch, convert_checkpoint, detect_layout,  # noqa: E402
                            infer_arch, model_parameter_shapes, official_to_mindspore_name, to_official,
                            verify_names_and_shapes)
from solov2.models.solov2 import build_model  # noqa: E402
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


def json_shapes(name):
    return {k: tuple(s) for k, s, _ in json.loads((SHARED / "fixtures" / name).read_text())["keys"]}
