"""SOLOv2 configuration schema: frozen, typed settings built from official SOLO (mmdetection-1.x style) config files.

The dataclasses of `config.settings` are what the rest of the package consumes (frozen: a setting is changed by an
override when the config is loaded, or by `dataclasses.replace`, never in place). `load_config(path, overrides=())` reads an
official config file (``configs/solov2/*.py``, through `config.reader`, never executed) and returns a validated
`SOLOv2Config`; every ConfigError message starts with the config file path.
"""
import difflib
import os
from typing import Iterable, List, Optional

from solov2.config.keys import SCHEMA_KEYS, SECTIONS, TOP_KEYS
from solov2.config.reader import ConfigError, _is_int, apply_overrides, load_config_dict  # noqa: F401 (API)
from solov2.config.section import MISSING, Section
from solov2.config.settings import (AmpConfig, BackboneConfig, DataConfig, EvalConfig, HeadConfig,  # noqa: F401
                                    MaskFeatConfig, NeckConfig, OptimConfig, SOLOv2Config, TestConfig)
from solov2.config.training import amp_config, evaluation_config, optim_config


# ------------------------------------------------------------------------ typed, validated config
_DCN_TYPES = ("DCN", "DCNv2")
_STEPS = ("LoadImageFromFile", "LoadAnnotations", "Resize", "RandomFlip", "Normalize", "Pad",
          "DefaultFormatBundle", "ImageToTensor", "Collect", "MultiScaleFlipAug")


def _dcn(sec: Section, key: str, allow_cfg: bool) -> Optional[str]:
    """A deformable-conv setting -> 'DCN' | 'DCNv2' | None. allow_cfg: a dict(type=..., deformable_groups=1,
    fallback_on_stride=False) (backbone dcn, mask_feat_head conv_cfg); else a plain type string (type_dcn)."""
    v = sec.d.get(key)
    if v is None:
        return None
    if not allow_cfg:
        return sec.one_of(key, _DCN_TYPES)
    d = sec.sub(key)
    kind = d.get("type", "str")
    if kind not in _DCN_TYPES:
        raise d.fail("type", f"{kind!r} is not supported by this port (supported: 'DCN', 'DCNv2'"
                             f"{'' if key == 'dcn' else ' or conv_cfg=None'})")
    d.one_of("deformable_groups", (1,), 1)
    d.one_of("fallback_on_stride", (False,), False)
    for k in d.d:
        if k not in ("type", "deformable_groups", "fallback_on_stride"):
            raise d.fail(k, "unknown deformable-convolution setting (this port reads type, deformable_groups=1, "
                            "fallback_on_stride=False)")
    return kind


def _norm_cfg(parent: Section, kind: str, default=MISSING) -> None:
    """parent.norm_cfg as mmcv's build_norm_layer reads it. This port builds its defaults only (eps 1e-5,
    requires_grad=True; BN momentum 0.1, GN 32 groups): another value or an unknown key is an error, never ignored."""
    nc = parent.sub("norm_cfg", default)
    nc.one_of("type", (kind,), kind if default is not MISSING else MISSING)
    nc.one_of("requires_grad", (True,), True), nc.one_of("eps", (1e-5,), 1e-5)
    own = {"BN": ("momentum", (0.1,), 0.1), "GN": ("num_groups", (32,), MISSING)}[kind]
    nc.one_of(*own)
    for key in nc.d:
        if key not in ("type", "requires_grad", "eps", own[0]):
            raise nc.fail(key, f"unknown {kind} setting (build_norm_layer takes type, requires_grad, eps, {own[0]})")


def _model(top: Section) -> tuple:
    """model.* -> (BackboneConfig, NeckConfig, HeadConfig, MaskFeatConfig, model.pretrained)."""
    model = top.sub("model")
    model.one_of("type", ("SOLOv2",))
    # mmdet 1.x build_detector lets a model's own train_cfg/test_cfg win over the top-level ones; this port reads
    # the top level (where every official SOLO config has them), so one inside the model is refused, not ignored
    model.forbid("train_cfg", "test_cfg", msg="is not read here: put it at the top level of the config, as the "
                                               "official SOLO configs do")
    b = model.sub("backbone")
    kind = b.one_of("type", ("ResNet", "ResNeXt"))
    b.one_of("num_stages", (4,), 4), b.one_of("style", ("pytorch",), "pytorch")
    _norm_cfg(b, "BN", {})
    depth = b.one_of("depth", (18, 34, 50, 101))
    groups, base_width = (b.get("groups", "int>=1", 1), b.get("base_width", "int>=1", 4)) if kind == "ResNeXt" \
        else (1, 4)
    if kind == "ResNet":
        b.forbid("groups", "base_width", msg="needs type='ResNeXt'")
    elif depth < 50:
        raise b.fail("depth", f"ResNeXt needs a Bottleneck depth (50 or 101), got {depth}")
    dcn, stages = _dcn(b, "dcn", allow_cfg=True), b.get("stage_with_dcn", "any", (False,) * 4)
    if not (isinstance(stages, (list, tuple)) and len(stages) == 4 and all(isinstance(v, bool) for v in stages)):
        raise b.fail("stage_with_dcn", f"must be 4 booleans (res2..res5), got {stages!r}")
    if any(stages) and dcn is None:
        raise b.fail("stage_with_dcn", "is set but dcn is None")
    if dcn is not None and depth < 50 and any(stages):
        raise b.fail("dcn", "BasicBlock backbones (ResNet-18/34) have no deformable variant (as in mmdetection)")
    backbone = BackboneConfig(depth=depth, frozen_stages=b.one_of("frozen_stages", (-1, 0, 1, 2, 3, 4), -1),
                              norm_eval=b.get("norm_eval", "bool", True),
                              out_indices=b.one_of("out_indices", ((0, 1, 2, 3),), (0, 1, 2, 3)),
                              groups=groups, base_width=base_width, dcn=dcn if any(stages) else None,
                              stage_with_dcn=tuple(stages) if dcn is not None else (False,) * 4)
    n = model.sub("neck")
    n.one_of("type", ("FPN",)), n.one_of("start_level", (0,), 0), n.one_of("end_level", (-1,), -1)
    n.forbid("add_extra_convs", "conv_cfg", "norm_cfg", "activation")
    base = 64 if backbone.depth < 50 else 256
    neck = NeckConfig(in_channels=n.one_of("in_channels", (tuple(base << i for i in range(4)),)),
                      out_channels=n.get("out_channels", "int"), num_outs=n.one_of("num_outs", (5,)))
    h = model.sub("bbox_head")
    head_type = h.get("type", "str")
    if head_type not in ("SOLOv2Head", "SOLOv2LightHead"):
        raise h.fail("type", f"{head_type!r} is not supported by this port (only 'SOLOv2Head' and "
                             "'SOLOv2LightHead'; SOLOHead and DecoupledSOLOHead are not)")
    h.forbid("conv_cfg")
    use_dcn = h.get("use_dcn_in_tower", "bool", False)
    head_dcn = _dcn(h, "type_dcn", allow_cfg=False) if use_dcn else None
    if use_dcn and head_dcn is None:
        raise h.fail("type_dcn", "must be 'DCN' or 'DCNv2' when use_dcn_in_tower=True")
    li, lc = h.sub("loss_ins"), h.sub("loss_cate")
    li.one_of("type", ("DiceLoss",)), lc.one_of("type", ("FocalLoss",)), lc.one_of("use_sigmoid", (True,), True)
    head = HeadConfig(  # defaults: those of the official SOLOv2Head signature / FocalLoss
        num_classes=h.get("num_classes", "int"), in_channels=h.get("in_channels", "int>=1"),
        stacked_convs=h.get("stacked_convs", "int>=1", 4), seg_feat_channels=h.get("seg_feat_channels", "int>=1", 256),
        ins_out_channels=h.get("ins_out_channels", "int>=1", 64), strides=h.get("strides", "ints>=1", (4, 8, 16, 32, 64)),
        scale_ranges=h.get("scale_ranges", "ranges", ((8, 32), (16, 64), (32, 128), (64, 256), (128, 512))),
        sigma=h.get("sigma", "num>0", 0.2), num_grids=h.get("num_grids", "ints>=1"),
        ins_loss_weight=li.get("loss_weight", "num>=0"), focal_gamma=lc.get("gamma", "num>=0", 2.0),
        focal_alpha=lc.get("alpha", "0..1", 0.25), cate_loss_weight=lc.get("loss_weight", "num>=0", 1.0),
        type=head_type, dcn=head_dcn, dcn_all_convs=head_type == "SOLOv2Head")
    if head.num_classes < 2:
        raise h.fail("num_classes", "must be >= 2 (number of classes + 1 for background)")
    for key in ("strides", "scale_ranges", "num_grids"):
        if len(getattr(head, key)) != neck.num_outs:
            raise h.fail(key, f"needs {neck.num_outs} entries, one per FPN level")
    m = model.sub("mask_feat_head")
    m.one_of("type", ("MaskFeatHead",))
    mask_dcn = _dcn(m, "conv_cfg", allow_cfg=True)
    _norm_cfg(m, "GN")
    mask_feat = MaskFeatConfig(in_channels=m.get("in_channels", "int"), out_channels=m.get("out_channels", "int"),
                               start_level=m.one_of("start_level", (0,)), end_level=m.one_of("end_level", (3,)),
                               num_classes=m.get("num_classes", "int"), dcn=mask_dcn)
    for sec, key, got, want, what in (
            (m, "num_classes", mask_feat.num_classes, head.ins_out_channels, "model.bbox_head.ins_out_channels"),
            (m, "in_channels", mask_feat.in_channels, neck.out_channels, "model.neck.out_channels"),
            (h, "in_channels", head.in_channels, neck.out_channels, "model.neck.out_channels")):
        if got != want:
            raise sec.fail(key, f"{got} must equal {what} ({want})")
    return backbone, neck, head, mask_feat, model.get("pretrained", "str?", None)


def _steps(top: Section, data: Section, split: str) -> List[Section]:
    """Pipeline steps of data.<split> (else top-level <split>_pipeline), MultiScaleFlipAug transforms inlined."""
    ds = data.d.get(split)
    todo = [(f"data.{split}.pipeline", ds["pipeline"]) if isinstance(ds, dict) and "pipeline" in ds
            else (f"{split}_pipeline", top.d.get(f"{split}_pipeline"))]
    out = []
    for where, steps in todo:                                      # grows while iterating
        if not isinstance(steps, (list, tuple)):
            raise top.fail(where, "missing or not a list of dict(type=...) steps")
        for i, s in enumerate(steps):
            if not isinstance(s, dict) or s.get("type") not in _STEPS:
                raise top.fail(f"{where}[{i}]", f"pipeline step {s.get('type') if isinstance(s, dict) else s!r} "
                                                "is not supported by this port")
            out.append(Section(top.path, s, f"{where}[{i}]"))
            if s["type"] == "MultiScaleFlipAug":
                todo.append((f"{where}[{i}].transforms", s.get("transforms")))
    return out


def _same_everywhere(steps: List[Section], keys: Iterable[str]) -> None:
    """The pipelines' steps of one kind (Normalize, Pad) agree on `keys`: this port applies one of each to training,
    validation and testing, so a step that differs would be ignored. (Validation runs the test pipeline.)"""
    def value(step: Section, key: str):   # as read: a list is a tuple, and to_rgb defaults to True (mmdet's)
        v = step.d.get(key, True if key == "to_rgb" else None)
        return tuple(v) if isinstance(v, list) else v
    for s in steps[1:]:
        for key in keys:
            if value(s, key) != value(steps[0], key):
                raise s.fail(key, f"{s.d.get(key)!r} differs from {steps[0].where}.{key} ({steps[0].d.get(key)!r}): "
                                  f"this port applies one {s.d['type']} to training, validation and testing")


def _data(top: Section) -> DataConfig:
    data = top.sub("data")
    train, test = _steps(top, data, "train"), _steps(top, data, "test")

    def find(steps: List[Section], kind: str) -> List[Section]:
        return [s for s in steps if s.d["type"] == kind]
    _same_everywhere(find(train + test, "Normalize"), ("mean", "std", "to_rgb"))
    _same_everywhere(find(train + test, "Pad"), ("size_divisor",))
    norm = (find(test, "Normalize") or [top.sub("img_norm_cfg")])[0]
    for s in find(train + test, "Resize"):
        s.one_of("keep_ratio", (True,), True), s.forbid("ratio_range")
    ts = (find(test, "MultiScaleFlipAug") or [s for s in find(test, "Resize") if "img_scale" in s.d]
          or [Section(top.path, {}, "data.test.pipeline")])[0]
    ts.forbid("flip", msg="flip test-time augmentation is not supported by this port")
    scales = ts.get("img_scale")
    if isinstance(scales, list) and len(scales) != 1:
        raise ts.fail("img_scale", "multi-scale testing is not supported by this port")
    test_scale = ts.check("img_scale", scales[0] if isinstance(scales, list) else scales, "scale")
    resize = find(train, "Resize")
    if len(resize) != 1:
        raise data.fail("train.pipeline", "needs exactly one Resize step")
    scales = resize[0].get("img_scale")
    scales = scales if isinstance(scales, list) else [scales]
    train_scales = tuple(resize[0].check("img_scale", s, "scale") for s in scales)
    if len(train_scales) > 1 and resize[0].one_of("multiscale_mode", ("value", "range"), "range") != "value":
        raise resize[0].fail("multiscale_mode", "'range' (random size between two scales) is not supported by this "
                                                "port; use multiscale_mode='value' with a list of scales")
    flip = (find(train, "RandomFlip") or [Section(top.path, {}, "")])[0]
    flip.one_of("direction", ("horizontal",), "horizontal")
    pad = (find(train, "Pad") or find(test, "Pad") or [Section(top.path, {}, "data.train.pipeline")])[0]
    if pad.get("size_divisor", "int") % 32:
        raise pad.fail("size_divisor", "must be a multiple of 32")
    files = {}
    for split in ("train", "val", "test"):
        ds = data.sub(split, None if split != "train" else MISSING)
        if ds.d is not None:
            ds.one_of("type", ("CocoDataset",))
        for key in ("ann_file", "img_prefix"):
            files[f"{split}_{key}"] = ds.get(key, "str", "") if ds.d is not None else ""
    max_images = {}
    for split in ("train", "val"):
        n = data.sub(split, {}).get("max_images", "int?", None) if data.d.get(split) is not None else None
        if n is not None and n < 1:
            raise data.fail(f"{split}.max_images", "must be >= 1")
        max_images[f"{split}_max_images"] = n
    return DataConfig(mean=norm.get("mean", "rgb"), std=norm.get("std", "rgb"), to_rgb=norm.get("to_rgb", "bool", True),
                      test_scale=test_scale, train_scales=train_scales,
                      flip_ratio=flip.check("flip_ratio", flip.d.get("flip_ratio") or 0.0, "num"),
                      size_divisor=pad.get("size_divisor", "int"), imgs_per_gpu=data.get("imgs_per_gpu", "int>=1"),
                      workers_per_gpu=data.get("workers_per_gpu", "int>=0"), **files, **max_images,
                      skip_bad=data.get("skip_bad", "bool", False),
                      canvas_buckets=data.get("canvas_buckets", "bool", True))




def _check_known_keys(top: Section) -> None:
    """Every key of a checked section is one the official files use or this port reads (config_keys.SECTIONS);
    any other is a typo or a setting this port would silently ignore: an error naming the closest key."""
    for where, allowed in SECTIONS.items():
        d = top.d
        for part in where.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        for key in (d if isinstance(d, dict) else ()):
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                raise ConfigError(f"{top.path}: {where}.{key}: unknown setting"
                                  + (f" (did you mean {close[0]!r}?)" if close else "")
                                  + f"; {where} takes: {', '.join(sorted(allowed))}")


def _check_new_top_keys(path: str, new_keys, overrides: List[str]) -> None:
    """ConfigError for a top-level key an override added that no reader looks up there (keys.TOP_KEYS): most
    often a section's key without its section, `lr=0.01` for `optimizer.lr=0.01`."""
    for key in sorted(new_keys - TOP_KEYS):
        item = next(o for o in overrides if o.partition("=")[0].strip().split(".")[0] == key)
        homes = [f"{where}.{key}" for where, allowed in SECTIONS.items() if key in allowed]
        raise ConfigError(f"{path}: override {item!r}: {key!r} is not a top-level setting"
                          + (f" (did you mean {' or '.join(homes)}?)" if homes else "")
                          + f"; the top level takes: {', '.join(sorted(TOP_KEYS))}")


def _test(top: Section) -> TestConfig:
    t = top.sub("test_cfg")
    return TestConfig(nms_pre=t.get("nms_pre", "int>=1"), score_thr=t.get("score_thr", "0..1"),
                      mask_thr=t.get("mask_thr", "0..1"), update_thr=t.get("update_thr", "0..1"),
                      kernel=t.one_of("kernel", ("gaussian", "linear")), sigma=t.get("sigma", "num>0"),
                      max_per_img=t.get("max_per_img", "int>=1"))


def test_config_from(test_cfg: dict, overrides: Iterable[str], source: str) -> TestConfig:
    """A TestConfig from a plain test_cfg dict (an export sidecar's) with `test_cfg.<key>=value` overrides, checked
    as `load_config` checks a config's test_cfg. Any other override is a ConfigError naming `source`."""
    overrides = list(overrides)
    for item in overrides:
        if not item.partition("=")[0].strip().startswith("test_cfg."):
            raise ConfigError(f"{source}: override {item!r}: an exported model takes only test_cfg.* options")
    top = Section(source, apply_overrides({"test_cfg": dict(test_cfg)}, overrides, source=source,
                                       known_keys=SCHEMA_KEYS))
    allowed = set(SECTIONS["test_cfg"])
    unknown = sorted(set(top.d["test_cfg"]) - allowed)
    if unknown:
        raise ConfigError(f"{source}: test_cfg.{unknown[0]}: unknown setting; test_cfg takes: {', '.join(sorted(allowed))}")
    return _test(top)


def load_config(path, overrides: Iterable[str] = ()) -> SOLOv2Config:
    """Read an official-style SOLOv2 config (str or os.PathLike), apply "a.b=value" overrides, validate.

    Returns SOLOv2Config. Raises ConfigError "<path>: <dotted.key>: <reason>" for missing or malformed
    settings and for settings this port does not support (DCN, other heads, 'range' multi-scale, ...).
    """
    path = os.fspath(path)
    overrides = list(overrides)
    file_dict = load_config_dict(path)
    merged = apply_overrides(file_dict, overrides, source=path, known_keys=SCHEMA_KEYS)
    _check_new_top_keys(path, merged.keys() - file_dict.keys(), overrides)
    top = Section(path, merged)
    backbone, neck, head, mask_feat, pretrained = _model(top)
    test = _test(top)
    data, optim, amp, evaluation = _data(top), optim_config(top), amp_config(top), evaluation_config(top)
    _check_known_keys(top)
    sec, key = next(((s, k) for s, k in ((top.sub("data").sub("train"), "classes"), (top, "classes"), (top, "CLASSES"))
                     if k in s.d), (top, "classes"))
    names = sec.get(key, "names", None)
    if names is not None and len(names) != head.num_classes - 1:
        raise sec.fail(key, f"{len(names)} class names, but model.bbox_head.num_classes={head.num_classes} "
                            "(must be the number of classes + 1 for background)")
    intervals = {}
    for name, field_name, default in (("checkpoint_config", "checkpoint_interval", 1),
                                      ("log_config", "log_interval", 50)):
        sec = top.sub(name, {})
        intervals[field_name] = sec.get("interval", "int", default)
        if intervals[field_name] < 1:
            raise sec.fail("interval", f"must be >= 1, got {intervals[field_name]}")
    return SOLOv2Config(backbone=backbone, neck=neck, head=head, mask_feat=mask_feat, test=test, data=data,
                        optim=optim, amp=amp, evaluation=evaluation, class_names=names,
                        load_from=top.get("load_from", "str?", None),
                        work_dir=top.get("work_dir", "str?", None), resume_from=top.get("resume_from", "str?", None),
                        pretrained=pretrained, **intervals, source=path)
