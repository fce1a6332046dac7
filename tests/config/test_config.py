"""solov2.config: safe reading of official-style (mmdetection-1.x) config files, overrides, validation.

Expected values are the config matrix of the spec (shared/docs/solov2_reference.md §0 and §7.4).
"""
import json
import re
from pathlib import Path

import pytest

from solov2.config import ConfigError, SOLOv2Config, apply_overrides, load_config, load_config_dict
from conftest import REPO, SHARED

CONFIGS = REPO / "configs" / "solov2"
TRASHCAN_TRAIN_ANN = SHARED / "datasets" / "trashcan_mini" / "annotations" / "instances_train_trashcan.json"

BIG_RANGES = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
LIGHT_RANGES = ((1, 56), (28, 112), (56, 224), (112, 448), (224, 896))
BIG_TRAIN = tuple((1333, s) for s in (800, 768, 736, 704, 672, 640))
LIGHT_TRAIN = tuple((768, s) for s in (512, 480, 448, 416, 384, 352))
C_BIG, C_SMALL = (256, 512, 1024, 2048), (64, 128, 256, 512)
BIG = dict(stacked_convs=4, seg_feat_channels=512, ins_out_channels=256, scale_ranges=BIG_RANGES,
           train_scales=BIG_TRAIN, test_scale=(1333, 800))
LIGHT = dict(stacked_convs=2, seg_feat_channels=256, ins_out_channels=128, scale_ranges=LIGHT_RANGES,
             train_scales=LIGHT_TRAIN, test_scale=(768, 448))
COCO = dict(num_classes=81, data_root="data/coco/")
TRASHCAN = dict(num_classes=23, data_root="data/trashcan/")
# Deformable variants (§0, §1, §3, §9): backbone (type, groups, base_width, dcn, stage_with_dcn), head, mask_feat_head
PLAIN = dict(backbone=(1, 4, None, (False,) * 4), head=("SOLOv2Head", None, True), mask_dcn=None)
DCN_STAGES = (False, True, True, True)
R101_DCN = dict(BIG, backbone=(1, 4, "DCNv2", DCN_STAGES), head=("SOLOv2Head", "DCNv2", True), mask_dcn="DCNv2",
                depth=101, fpn_in=C_BIG)
X101_DCN = dict(R101_DCN, backbone=(64, 4, "DCNv2", DCN_STAGES), pretrained="open-mmlab://resnext101_64x4d")
LIGHT512_DCN = dict(stacked_convs=3, seg_feat_channels=256, ins_out_channels=128,
                    scale_ranges=((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048)),
                    train_scales=tuple((852, s) for s in (512, 480, 448, 416, 384, 352)), test_scale=(852, 512),
                    backbone=(1, 4, "DCN", DCN_STAGES), head=("SOLOv2LightHead", "DCN", False), mask_dcn=None,
                    depth=50, fpn_in=C_BIG)
EXPECTED = {
    "solov2_r50_fpn_8gpu_1x.py": dict(BIG, **COCO, depth=50, fpn_in=C_BIG, train_scales=((1333, 800),),
                                      lr_steps=(9, 11), total_epochs=12),
    "solov2_r50_fpn_8gpu_3x.py": dict(BIG, **COCO, depth=50, fpn_in=C_BIG),
    "solov2_r101_fpn_8gpu_3x.py": dict(BIG, **COCO, depth=101, fpn_in=C_BIG),
    "solov2_light_448_r18_fpn_8gpu_3x.py": dict(LIGHT, **COCO, depth=18, fpn_in=C_SMALL),
    "solov2_light_448_r34_fpn_8gpu_3x.py": dict(LIGHT, **COCO, depth=34, fpn_in=C_SMALL),
    "solov2_light_448_r50_fpn_8gpu_3x.py": dict(LIGHT, **COCO, depth=50, fpn_in=C_BIG),
    "solov2_r101_fpn_8gpu_3x_trashcan.py": dict(BIG, **TRASHCAN, depth=101, fpn_in=C_BIG),
    "solov2_light_448_r18_fpn_8gpu_3x_trashcan.py": dict(LIGHT, **TRASHCAN, depth=18, fpn_in=C_SMALL),
    "solov2_r101_dcn_fpn_8gpu_3x.py": dict(R101_DCN, **COCO),
    "solov2_x101_dcn_fpn_8gpu_3x.py": dict(X101_DCN, **COCO),
    "solov2_light_512_dcn_r50_fpn_8gpu_3x.py": dict(LIGHT512_DCN, **COCO),
    "solov2_r101_dcn_fpn_8gpu_3x_trashcan.py": dict(R101_DCN, **TRASHCAN),
    "solov2_x101_dcn_fpn_8gpu_3x_trashcan.py": dict(X101_DCN, **TRASHCAN),
    "solov2_light_512_dcn_r50_fpn_8gpu_3x_trashcan.py": dict(LIGHT512_DCN, **TRASHCAN),
}
R101 = CONFIGS / "solov2_r101_fpn_8gpu_3x.py"


def write(tmp_path: Path, text: str, name: str = "cfg.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def raises(fn, *args, match: str) -> str:
    """Call fn(*args); it must raise ConfigError whose message matches `match` (regex). Returns the message."""
    with pytest.raises(ConfigError) as info:
        fn(*args)
    msg = str(info.value)
    assert re.search(match, msg), msg
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------ (a) every shipped config, values of §0
DEMO = "solov2_light_r18_demo.py"   # the demo's from-scratch config: not an official one, checked below


def test_every_shipped_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.py")) == sorted(list(EXPECTED) + [DEMO])


def test_demo_config_trains_from_scratch_at_one_scale():
    cfg = load_config(CONFIGS / DEMO)
    assert cfg.backbone.depth == 18 and cfg.head.ins_out_channels == cfg.mask_feat.num_classes
    assert cfg.class_names and len(cfg.class_names) == cfg.head.num_classes - 1
    # no pretrained backbone exists offline: every stage trains and BN uses batch statistics
    assert cfg.backbone.frozen_stages == -1 and cfg.backbone.norm_eval is False
    assert len(cfg.data.train_scales) == 1   # one train graph compilation


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_values(name):
    exp = dict(PLAIN, **EXPECTED[name])
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, SOLOv2Config) and cfg.source == str(CONFIGS / name)
    b, n, h, m, d, o, t = cfg.backbone, cfg.neck, cfg.head, cfg.mask_feat, cfg.data, cfg.optim, cfg.test
    assert (b.depth, b.frozen_stages, b.norm_eval, b.out_indices) == (exp["depth"], 1, True, (0, 1, 2, 3))
    assert (b.groups, b.base_width, b.dcn, b.stage_with_dcn) == exp["backbone"]
    assert (h.type, h.dcn, h.dcn_all_convs) == exp["head"] and m.dcn == exp["mask_dcn"]
    assert (n.in_channels, n.out_channels, n.num_outs) == (exp["fpn_in"], 256, 5)
    assert (h.num_classes, h.in_channels, h.stacked_convs, h.seg_feat_channels, h.ins_out_channels) == (
        exp["num_classes"], 256, exp["stacked_convs"], exp["seg_feat_channels"], exp["ins_out_channels"])
    assert h.cate_out_channels == exp["num_classes"] - 1
    assert h.scale_ranges == exp["scale_ranges"]
    assert (h.strides, h.num_grids, h.sigma) == ((8, 8, 16, 32, 32), (40, 36, 24, 16, 12), 0.2)
    assert (h.ins_loss_weight, h.focal_gamma, h.focal_alpha, h.cate_loss_weight) == (3.0, 2.0, 0.25, 1.0)
    assert (m.in_channels, m.out_channels, m.start_level, m.end_level, m.num_classes) == (
        256, 128, 0, 3, exp["ins_out_channels"])
    assert (t.nms_pre, t.score_thr, t.mask_thr, t.update_thr, t.kernel, t.sigma, t.max_per_img) == (
        500, 0.1, 0.5, 0.05, "gaussian", 2.0, 100)
    assert d.test_scale == exp["test_scale"] and d.train_scales == exp["train_scales"]
    assert (d.mean, d.std, d.to_rgb) == ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), True)
    assert (d.flip_ratio, d.size_divisor, d.imgs_per_gpu, d.workers_per_gpu) == (0.5, 32, 2, 2)
    assert d.train_ann_file.startswith(exp["data_root"] + "annotations/") and d.train_ann_file.endswith(".json")
    assert d.val_img_prefix.startswith(exp["data_root"]) and d.test_ann_file == d.val_ann_file
    assert (o.lr, o.momentum, o.weight_decay, o.grad_clip) == (0.01, 0.9, 1e-4, 35.0)
    assert (o.warmup, o.warmup_iters, o.warmup_ratio, o.lr_steps, o.lr_gamma, o.total_epochs) == (
        "linear", 500, 0.01, exp.get("lr_steps", (27, 33)), 0.1, exp.get("total_epochs", 36))
    assert cfg.load_from is None
    assert cfg.pretrained == exp.get("pretrained", f"torchvision://resnet{exp['depth']}")
    assert (cfg.class_names is None) == (exp["num_classes"] == 81)


@pytest.mark.parametrize("name", [k for k in EXPECTED if "trashcan" in k])
def test_trashcan_configs(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.data.train_ann_file == "data/trashcan/annotations/instances_train_trashcan.json"
    assert cfg.data.train_img_prefix == "data/trashcan/train/"
    assert cfg.data.val_ann_file == "data/trashcan/annotations/instances_val_trashcan.json"
    assert cfg.data.val_img_prefix == "data/trashcan/val/"
    assert len(cfg.class_names) == 22 == cfg.head.cate_out_channels
    assert len(set(cfg.class_names)) == 22
    if not TRASHCAN_TRAIN_ANN.is_file():
        pytest.skip(f"{TRASHCAN_TRAIN_ANN} not found (set SOLOV2_SHARED)")
    cats = json.loads(TRASHCAN_TRAIN_ANN.read_text())["categories"]
    assert list(cfg.class_names) == [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


# ------------------------------------------------------------------ (b) the constructs official files use
CONSTRUCTS = '''"""A docstring is fine."""
# a comment
base = 'data/coco/'  # trailing comment
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
pipeline = [
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Resize', img_scale=[(1333, 800), (1333, 768)], multiscale_mode='value'),
    dict(type='MultiScaleFlipAug', transforms=[dict(type='Pad', size_divisor=32)]),
]
data = dict(train=dict(ann_file=base + 'annotations/x.json', pipeline=pipeline), flags={1, 2},
            val=dict(pipeline=pipeline), test=dict(pipeline=pipeline))
c = d = [0]
device_ids = range(8)
scale_ranges = ((1, 96), (48, 192))
merged = {**img_norm_cfg, 'extra': None}
arith = [1 + 2, 7 - 10, 3 * 4, 7 / 2, 7 // 2, 7 % 4, -5, 2.5 * -2, 'a' + 'b', [1] + [2], (1,) + (2,)]
lists = (list(range(2, 8, 2)), tuple([1, 2]), list(), dict(dict(a=1), b=True))
'''


def test_official_constructs_load(tmp_path):
    d = load_config_dict(write(tmp_path, CONSTRUCTS))
    assert list(d) == ["base", "img_norm_cfg", "pipeline", "data", "c", "d", "device_ids", "scale_ranges",
                       "merged", "arith", "lists"]
    assert d["pipeline"][0] == {"type": "Normalize", "mean": [123.675, 116.28, 103.53],
                                "std": [58.395, 57.12, 57.375], "to_rgb": True}
    assert d["pipeline"][1]["img_scale"] == [(1333, 800), (1333, 768)]
    assert d["pipeline"][2]["transforms"][0] == {"type": "Pad", "size_divisor": 32}
    assert d["data"]["train"]["ann_file"] == "data/coco/annotations/x.json"
    assert d["data"]["train"]["pipeline"] == d["pipeline"] and d["data"]["flags"] == {1, 2}
    assert list(d["device_ids"]) == list(range(8)) and d["scale_ranges"] == ((1, 96), (48, 192))
    assert d["merged"] == dict(d["img_norm_cfg"], extra=None)
    assert d["arith"] == [3, -3, 12, 3.5, 3, 3, -5, -5.0, "ab", [1, 2], (1, 2)]
    assert d["lists"] == ([2, 4, 6], (1, 2), [], {"a": 1, "b": True})
    # every use of a name is a copy: changing one entry (e.g. by an override) changes nothing else
    d["pipeline"][0]["mean"][0] = 0.0
    d["data"]["test"]["pipeline"][1]["img_scale"] = (768, 448)
    d["c"].append(1)
    assert d["data"]["train"]["pipeline"][0]["mean"][0] == 123.675 and d["img_norm_cfg"]["mean"][0] == 123.675
    assert d["data"]["val"]["pipeline"][1]["img_scale"] == [(1333, 800), (1333, 768)] and d["d"] == [0]


# ------------------------------------------------------------------ (c) refused constructs, with file and line
@pytest.mark.parametrize("line, what", [
    ("import os", "import"),
    ("from os import path", "import"),
    ("x = __import__('os').system('touch {marker}')", "call"),
    ("x = a.real", "attribute access"),
    ("_base_ = './solov2_r50_fpn_8gpu_3x.py'", "_base_"),
    ("f = lambda: 1", "lambda"),
    ("s = f'{{a}}'", "f-string"),
    ("x = open('{marker}', 'w')", "call"),
    ("x = [i for i in range(3)]", "ListComp"),
    ("x = 2 ** 10", "BinOp"),
    ("x = a if a else 2", "IfExp"),
    ("x = undefined_name", "name 'undefined_name' is not defined"),
    ("x = 'a' * 3", "unsupported operands"),
    ("print(a)", "call"),
    ("def f(): pass", "FunctionDef"),
])
def test_refused_constructs_name_file_and_line(tmp_path, line, what):
    marker = tmp_path / "executed"
    path = write(tmp_path, "a = 1\n# comment\n" + line.format(marker=marker) + "\nb = 2\n")
    msg = raises(load_config_dict, path, match=re.escape(what))
    assert msg.startswith(f"{path}:3: "), msg
    assert not marker.exists(), "the config file was executed"


def test_missing_and_broken_files(tmp_path):
    missing = tmp_path / "nope.py"
    assert raises(load_config_dict, missing, match="no such config file") == f"{missing}: no such config file"
    raises(load_config, missing, match="no such config file")
    assert raises(load_config_dict, write(tmp_path, "a = 1\nb = (\n"), match="syntax error").startswith(
        str(tmp_path / "cfg.py"))
    assert raises(load_config_dict, write(tmp_path, "a = 1\nb = 1 / 0\n"), match="division by zero").startswith(
        f"{tmp_path / 'cfg.py'}:2:")


# ------------------------------------------------------------------ (d) unsupported settings
DCN_BACKBONE = """style='pytorch',
        dcn=dict(
            type='DCNv2',
            deformable_groups=1,
            fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)),"""


def test_dcn_backbone_in_a_plain_file_loads(tmp_path):
    """The official DCN block pasted into the R101 file: a deformable backbone, head and mask features untouched."""
    text = R101.read_text()
    assert text.count("style='pytorch'),") == 1
    cfg = load_config(write(tmp_path, text.replace("style='pytorch'),", DCN_BACKBONE)))
    assert (cfg.backbone.dcn, cfg.backbone.stage_with_dcn) == ("DCNv2", (False, True, True, True))
    assert cfg.head.dcn is None and cfg.mask_feat.dcn is None
    typo = write(tmp_path, text.replace("style='pytorch'),", DCN_BACKBONE.replace("deformable_groups", "deform_groups")))
    raises(load_config, typo, match=r"model\.backbone\.dcn\.deform_groups: unknown deformable-convolution setting")


@pytest.mark.parametrize("override, match", [
    ("model.backbone.dcn={'type': 'DCNv3'}", r"model\.backbone\.dcn\.type: 'DCNv3' is not supported"),
    ("model.backbone.dcn.deformable_groups=4", r"model\.backbone\.dcn\.deformable_groups: 4 is not supported"),
    ("model.backbone.dcn.fallback_on_stride=True", r"dcn\.fallback_on_stride: True is not supported"),
    ("model.backbone.dcn.modulated=True", r"model\.backbone\.dcn has no key 'modulated'"),
    ("model.backbone.stage_with_dcn=(True, True)", r"stage_with_dcn: must be 4 booleans"),
    ("model.backbone.dcn=None", r"model\.backbone\.stage_with_dcn: is set but dcn is None"),
    ("model.bbox_head.type_dcn=DCNv3", r"model\.bbox_head\.type_dcn: 'DCNv3' is not supported"),
    ("model.bbox_head.type_dcn=None", r"model\.bbox_head\.type_dcn: must be 'DCN' or 'DCNv2' when use_dcn_in_tower"),
    ("model.mask_feat_head.conv_cfg={'type': 'ConvWS'}", r"mask_feat_head\.conv_cfg\.type: 'ConvWS' is not supp"),
    ("model.backbone.depth=34", r"model\.backbone\.depth: ResNeXt needs a Bottleneck depth"),
    ("model.backbone.groups=two", r"model\.backbone\.groups: must be an integer >= 1"),
])
def test_bad_deformable_and_resnext_settings(override, match):
    x101 = CONFIGS / "solov2_x101_dcn_fpn_8gpu_3x.py"
    msg = raises(load_config, x101, [override], match=match)
    assert msg.startswith(f"{x101}: "), msg


def test_dcn_on_basic_blocks_and_groups_on_resnet_are_refused():
    r18 = CONFIGS / "solov2_light_448_r18_fpn_8gpu_3x.py"
    raises(load_config, r18, ["model.backbone.dcn={'type': 'DCN'}", "model.backbone.stage_with_dcn=(False, True, True, True)"],
           match=r"model\.backbone\.dcn: BasicBlock backbones")
    raises(load_config, R101, ["model.backbone.groups=32"], match=r"model\.backbone\.groups: needs type='ResNeXt'")


@pytest.mark.parametrize("override, match", [
    ("model.backbone.stage_with_dcn=(False, True, True, True)", r"model\.backbone\.stage_with_dcn: is set but dcn"),
    ("model.bbox_head.use_dcn_in_tower=True", r"model\.bbox_head\.type_dcn: must be 'DCN' or 'DCNv2'"),
    ("model.bbox_head.type=DecoupledSOLOHead", r"model\.bbox_head\.type: 'DecoupledSOLOHead' is not supported"),
    ("model.bbox_head.type=SOLOHead", r"model\.bbox_head\.type: 'SOLOHead' is not supported"),
    ("model.type=SOLO", r"model\.type: 'SOLO' is not supported"),
    ("model.backbone.type=HRNet", r"model\.backbone\.type: 'HRNet' is not supported"),
    ("model.backbone.depth=152", r"model\.backbone\.depth: 152 is not supported"),
    ("model.neck.add_extra_convs=True", r"model\.neck\.add_extra_convs: True is not supported"),
    ("model.bbox_head.loss_cate={'type': 'CrossEntropyLoss'}", r"loss_cate\.type: 'CrossEntropyLoss' is not supp"),
    ("data.train.pipeline.2.multiscale_mode=range", r"data\.train\.pipeline\[2\]\.multiscale_mode: 'range'"),
    ("data.train.pipeline.3.type=PhotoMetricDistortion", r"pipeline\[3\]: pipeline step 'PhotoMetricDistortion'"),
    ("data.test.pipeline.1.flip=True", r"data\.test\.pipeline\[1\]\.flip: flip test-time augmentation"),
    ("optimizer.type=Adam", r"optimizer\.type: 'Adam' is not supported"),
    ("lr_config.policy=cosine", r"lr_config\.policy: 'cosine' is not supported"),
    ("model.mask_feat_head.num_classes=128", r"mask_feat_head\.num_classes: 128 must equal .*ins_out_channels"),
    ("data.imgs_per_gpu=two", r"data\.imgs_per_gpu: must be an integer >= 1, got .two."),
    ("total_epochs=None", r"total_epochs: must be an integer"),
    ("checkpoint_config.interval=0", r"checkpoint_config\.interval: must be >= 1, got 0"),
    ("log_config.interval=-5", r"log_config\.interval: must be >= 1, got -5"),
    # read by the official code, not built by this port: refused rather than ignored
    ("model.test_cfg={'score_thr': 0.3}", r"model\.test_cfg: is not read here: put it at the top level"),
    ("model.train_cfg={'a': 1}", r"model\.train_cfg: is not read here"),
    ("model.backbone.norm_cfg={'type': 'BN', 'requires_grad': False}", r"norm_cfg\.requires_grad: False is not sup"),
    ("model.backbone.norm_cfg={'type': 'BN', 'eps': 1e-3}", r"backbone\.norm_cfg\.eps: 0\.001 is not supported"),
    ("model.backbone.norm_cfg={'type': 'BN', 'momentum': 0.03}", r"norm_cfg\.momentum: 0\.03 is not supported"),
    ("model.backbone.norm_cfg={'type': 'SyncBN'}", r"backbone\.norm_cfg\.type: 'SyncBN' is not supported"),
    ("model.mask_feat_head.norm_cfg={'type': 'GN', 'num_groups': 32, 'eps': 1e-6}",
     r"mask_feat_head\.norm_cfg\.eps: 1e-06 is not supported"),
    ("model.mask_feat_head.norm_cfg={'type': 'GN', 'num_groups': 32, 'affine': False}",
     r"mask_feat_head\.norm_cfg\.affine: unknown GN setting"),
    ("model.neck.end_level=4", r"model\.neck\.end_level: 4 is not supported"),
    ("lr_config.step=[33, 27]", r"lr_config\.step: must be epochs >= 1 in increasing order, got \[33, 27\]"),
    ("lr_config.step=[0, 27]", r"lr_config\.step: must be epochs >= 1 in increasing order"),
    ("data.train.pipeline.4.std=[1.0, 1.0, 1.0]", r"data\.test\.pipeline\[1\]\.transforms\[2\]\.std: \[58\.395, "
                                                  r".*differs from data\.train\.pipeline\[4\]\.std \(\[1\.0, 1\.0, 1\.0\]\)"),
    ("data.train.pipeline.5.size_divisor=64", r"transforms\[3\]\.size_divisor: 32 differs from .*one Pad to training"),
])
def test_unsupported_settings(override, match):
    msg = raises(load_config, R101, [override], match=match)
    assert msg.startswith(f"{R101}: "), msg


def test_pipelines_that_mean_the_same_normalisation_agree():
    """A mean written as a tuple in one pipeline and as a list in the other is the same normalisation."""
    cfg = load_config(R101, ["data.train.pipeline.4.mean=(123.675, 116.28, 103.53)"])
    assert cfg.data.to_rgb is True


def test_multiscale_without_mode_is_mmdet_range(tmp_path):
    """mmdet's Resize defaults to multiscale_mode='range': several scales without 'value' must be refused."""
    text = R101.read_text()
    assert text.count("multiscale_mode='value',") == 1
    path = write(tmp_path, text.replace("multiscale_mode='value',", ""))
    raises(load_config, path, match=r"multiscale_mode: 'range' \(random size between two scales\) is not supported")
    single = load_config(path, ["data.train.pipeline.2.img_scale=(1333, 800)"])   # the official 1x config
    assert single.data.train_scales == ((1333, 800),)


# ------------------------------------------------------------------ (e) overrides
def test_apply_overrides_sets_nested_values():
    cfg = {"data": {"imgs_per_gpu": 2, "train": {"ann_file": "a.json", "pipeline": [
        {"type": "Resize", "img_scale": (1333, 800), "keep_ratio": False}]}},
           "total_epochs": 36, "model": {"bbox_head": {"num_classes": 81}}}
    out = apply_overrides(cfg, ["data.imgs_per_gpu=4", "total_epochs=2", "data.train.ann_file=/x/y.json",
                                "model.bbox_head.num_classes=23", "data.train.pipeline.0.img_scale=(768, 448)",
                                "data.train.pipeline.-1.keep_ratio=True", "lr=1e-3", "name=abc", "quoted='7'",
                                "newtop.key=[1, 2]", "data.train.classes=('a', 'b')", "work_dir= ./w d "])
    assert out["data"]["imgs_per_gpu"] == 4 and out["total_epochs"] == 2
    assert out["data"]["train"]["ann_file"] == "/x/y.json" and out["model"]["bbox_head"]["num_classes"] == 23
    assert out["data"]["train"]["pipeline"][0] == {"type": "Resize", "img_scale": (768, 448), "keep_ratio": True}
    assert out["lr"] == 1e-3 and out["name"] == "abc" and out["quoted"] == "7"
    assert out["newtop"] == {"key": [1, 2]} and out["data"]["train"]["classes"] == ("a", "b")
    assert out["work_dir"] == "./w d"
    assert cfg["data"]["imgs_per_gpu"] == 2 and cfg["data"]["train"]["pipeline"][0]["img_scale"] == (1333, 800)


@pytest.mark.parametrize("override, match", [
    ("total_epochs.x=1", r"override 'total_epochs\.x=1': total_epochs is not a dict \(type int\)"),
    ("data.imgs_per_gpu.n=1", r"data\.imgs_per_gpu is not a dict \(type int\)"),
    ("data.pipeline.5.type=x", r"data\.pipeline is a list and '5' is not a valid index"),
    ("data.pipeline.x=1", r"data\.pipeline is a list and 'x' is not a valid index"),
    ("data.traim.ann_file=x", r"data has no key 'traim'"),
    ("no_equals_sign", r"expected 'dotted\.key=value'"),
    ("data..x=1", r"expected 'dotted\.key=value'"),
])
def test_apply_overrides_bad_paths(override, match):
    cfg = {"total_epochs": 36, "data": {"imgs_per_gpu": 2, "pipeline": [{"type": "Resize"}]}}
    msg = raises(apply_overrides, cfg, [override], "cfg.py", match=match)
    assert msg.startswith("cfg.py: override "), msg


def test_load_config_with_overrides():
    cfg = load_config(R101, ["data.imgs_per_gpu=4", "total_epochs=2", "data.train.ann_file=/x/y.json",
                             "optimizer.lr=0.02", "lr_config.step=[1]", "optimizer_config.grad_clip=None",
                             "data.train.pipeline.2.img_scale=[(640, 480), (640, 448)]", "load_from=w.ckpt"])
    assert (cfg.data.imgs_per_gpu, cfg.optim.total_epochs, cfg.data.train_ann_file) == (4, 2, "/x/y.json")
    assert (cfg.optim.lr, cfg.optim.lr_steps, cfg.optim.grad_clip) == (0.02, (1,), None)
    assert cfg.data.train_scales == ((640, 480), (640, 448)) and cfg.load_from == "w.ckpt"
    raises(load_config, R101, ["model.bbox_haed.num_classes=23"], match=r"^.*: override .*model has no key 'bbox_haed'")


@pytest.mark.parametrize("override, match", [
    ("optimizer.lrr=0.5", r"optimizer has no key 'lrr' \(did you mean 'lr'\?\) and it is not a setting"),
    ("total_epoch=3", r"the top level has no key 'total_epoch' \(did you mean 'total_epochs'\?\)"),
    ("model.backbone.frozen_stage=-1", r"did you mean 'frozen_stages'"),
    # a section's key without its section would be a new top-level entry that nothing reads
    ("lr=0.005", r"override 'lr=0.005': 'lr' is not a top-level setting \(did you mean optimizer\.lr\?\)"),
    ("imgs_per_gpu=4", r"'imgs_per_gpu' is not a top-level setting \(did you mean data\.imgs_per_gpu\?\)"),
    ("backbone.frozen_stages=-1", r"'backbone' is not a top-level setting \(did you mean model\.backbone\?\)"),
])
def test_typos_in_overrides_are_errors_with_the_closest_key(override, match):
    raises(load_config, R101, [override], match=match)


@pytest.mark.parametrize("override, match", [
    ("total_epochs=0", r"total_epochs: must be an integer >= 1, got 0"),
    ("optimizer.lr=-0.01", r"optimizer\.lr: must be a number > 0, got -0\.01"),
    ("model.bbox_head.stacked_convs=-1", r"model\.bbox_head\.stacked_convs: must be an integer >= 1, got -1"),
    ("test_cfg.max_per_img=-5", r"test_cfg\.max_per_img: must be an integer >= 1, got -5"),
    ("data.imgs_per_gpu=0", r"data\.imgs_per_gpu: must be an integer >= 1, got 0"),
    ("test_cfg.score_thr=1.5", r"test_cfg\.score_thr: must be a number in \[0, 1\], got 1\.5"),
    ("optimizer.momentum=2", r"optimizer\.momentum: must be a number in \[0, 1\]"),
    ("optimizer_config.grad_clip.max_norm=0", r"grad_clip\.max_norm: must be a number > 0"),
])
def test_values_out_of_range_are_errors(override, match):
    raises(load_config, R101, [override], match=match)


def test_pipeline_steps_by_type_and_wrong_positions():
    ok = load_config(R101, ["data.train.pipeline.Resize.img_scale=[(640, 480)]",
                            "data.train.pipeline.RandomFlip.flip_ratio=0.0",
                            "data.test.pipeline.MultiScaleFlipAug.img_scale=(512, 320)"])
    assert ok.data.train_scales == ((640, 480),) and ok.data.flip_ratio == 0.0 and ok.data.test_scale == (512, 320)
    raises(load_config, R101, ["data.train.pipeline.3.img_scale=[(640, 480)]"],
           match=r"data\.train\.pipeline\.3 is a RandomFlip step, which has no key 'img_scale' \(name steps by type")
    raises(load_config, R101, ["data.train.pipeline.Rezise.img_scale=[(640, 480)]"],
           match=r"data\.train\.pipeline is a list and 'Rezise' is not a valid index")


@pytest.mark.parametrize("edit, match", [
    (("stacked_convs=4,", "stacked_conv=4,"), r"model\.bbox_head\.stacked_conv: unknown setting \(did you mean "
                                              r"'stacked_convs'\?\)"),
    (("lr=0.01,", "lrr=0.01,"), r"optimizer\.lr: missing \(required\); the file has 'lrr': a typo\?"),
    (("frozen_stages=1,", "frozen_stages=1, with_cp=True,"), r"model\.backbone\.with_cp: unknown setting"),
    (("imgs_per_gpu=2,", "imgs_per_gpu=2, shuffle=False,"), r"data\.shuffle: unknown setting"),
])
def test_unknown_keys_in_config_files_are_errors(tmp_path, edit, match):
    src = R101.read_text()
    assert edit[0] in src
    path = tmp_path / "typo.py"
    path.write_text(src.replace(edit[0], edit[1], 1))
    raises(load_config, path, match=match)


def test_overrides_may_add_keys_the_schema_reads():
    cfg = load_config(R101, ["data.train.max_images=5", "data.skip_bad=True", "data.canvas_buckets=False"])
    assert (cfg.data.train_max_images, cfg.data.skip_bad, cfg.data.canvas_buckets) == (5, True, False)


# ------------------------------------------------------------------ (f) num_classes override; class names
def test_light_r18_with_23_classes():
    cfg = load_config(CONFIGS / "solov2_light_448_r18_fpn_8gpu_3x.py", ["model.bbox_head.num_classes=23"])
    assert cfg.head.num_classes == 23 and cfg.head.cate_out_channels == 22
    assert load_config(CONFIGS / "solov2_light_448_r18_fpn_8gpu_3x.py").head.cate_out_channels == 80


def test_class_names_must_match_num_classes():
    trashcan = CONFIGS / "solov2_r101_fpn_8gpu_3x_trashcan.py"
    raises(load_config, trashcan, ["model.bbox_head.num_classes=81"],
           match=r"^.*trashcan\.py: classes: 22 class names, but model\.bbox_head\.num_classes=81")
    cfg = load_config(R101, ["data.train.classes=('a', 'b')", "model.bbox_head.num_classes=3"])
    assert cfg.class_names == ("a", "b")
    raises(load_config, R101, ["classes=('a', 1)", "model.bbox_head.num_classes=3"], match=r": classes: must be")


def test_schema_keys_cover_every_key_the_readers_look_up():
    """An override may add only SCHEMA_KEYS; a key read by config/schema.py but missing there would be refused."""
    import re

    import solov2.config.schema as config_module
    import solov2.config.training as training_module
    from solov2.config.keys import SCHEMA_KEYS
    src = open(config_module.__file__).read() + open(training_module.__file__).read()
    read = set(re.findall(r'\.(?:get|one_of|sub|check)\("([A-Za-z_0-9]+)"', src))  # the key, not the kind
    for names in re.findall(r'\.forbid\(((?:"[A-Za-z_0-9]+",?\s*)+)', src):          # forbid(k1, k2, ...)
        read |= set(re.findall(r'"([A-Za-z_0-9]+)"', names))
    assert read and read <= SCHEMA_KEYS, sorted(read - SCHEMA_KEYS)


def test_evaluation_section_in_mmdetection_form(tmp_path):
    """evaluation = dict(interval, metric, save_best): absent = no validation; 'auto' = the first metric's mAP."""
    from solov2.config import EvalConfig
    assert load_config(R101).evaluation == EvalConfig() and EvalConfig().interval == 0
    text = (CONFIGS / "solov2_r101_fpn_8gpu_3x_trashcan.py").read_text()
    (tmp_path / "c.py").write_text(text + "\nevaluation = dict(interval=2, metric=['bbox', 'segm'], save_best='auto')\n")
    ev = load_config(tmp_path / "c.py").evaluation
    assert (ev.interval, ev.metrics, ev.save_best) == (2, ("bbox", "segm"), "bbox_mAP")
    ev = load_config(R101, ["evaluation.interval=1", "evaluation.metric=segm", "evaluation.save_best=segm_mAP_50",
                            "data.val.max_images=3"]).evaluation
    assert (ev.interval, ev.metrics, ev.save_best) == (1, ("segm",), "segm_mAP_50")
    assert ev.keys() == ("segm_mAP", "segm_mAP_50", "segm_mAP_75", "segm_mAP_s", "segm_mAP_m", "segm_mAP_l")
    assert load_config(R101, ["data.val.max_images=3"]).data.val_max_images == 3


@pytest.mark.parametrize("override, match", [
    ("evaluation.interval=0", r"evaluation\.interval: must be an integer >= 1, got 0"),
    ("evaluation.interval=1.5", r"evaluation\.interval: must be an integer >= 1"),
    ("evaluation.metric=proposal", r"evaluation\.metric: must be 'segm', 'bbox' or a list of them"),
    ("evaluation.metric=['segm','segm']", r"evaluation\.metric: .* without repeats"),
    ("evaluation.metric=[]", r"evaluation\.metric: must be"),
    ("evaluation.save_best=segm_AP", r"evaluation\.save_best: 'segm_AP' is not a key this evaluation logs"),
    ("evaluation={'metric': 'bbox', 'save_best': 'segm_mAP'}", r"evaluation\.save_best: 'segm_mAP' is not a key"),
    ("evaluation={'intervl': 1}", r"evaluation\.intervl: unknown setting \(did you mean 'interval'\?\)"),
    ("evaluation=3", r"evaluation: must be a dict, got 3"),
    ("data.val.max_images=0", r"data\.val\.max_images: must be >= 1"),
])
def test_bad_evaluation_settings_name_the_key(override, match):
    raises(load_config, R101, [override], match=rf"^\S*solov2_r101_fpn_8gpu_3x\.py: {match}")
