"""SOLOv2 configuration: typed settings built from official SOLO (mmdetection-1.x style) config files.

The dataclasses below are what the rest of the package consumes. `load_config(path)` reads an official
config file (``configs/solov2/*.py``) without executing it and returns a `SOLOv2Config`.

Public API:
  load_config_dict(path) -> dict             the file's top-level names, evaluated safely (no exec)
  apply_overrides(cfg_dict, overrides) -> dict   mmdetection-style ``a.b.c=value`` overrides (new dict)
  load_config(path, overrides=()) -> SOLOv2Config   validated, typed settings
  ConfigError                                 every message starts with the config file path
"""
import ast
import copy
import operator
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .errors import SolovError


@dataclass
class BackboneConfig:
    depth: int = 101                      # 18, 34, 50 or 101
    frozen_stages: int = 1                # stem + layer1 frozen
    norm_eval: bool = True                # BN running stats frozen in training
    out_indices: Tuple[int, ...] = (0, 1, 2, 3)


@dataclass
class NeckConfig:
    in_channels: Tuple[int, ...] = (256, 512, 1024, 2048)
    out_channels: int = 256
    num_outs: int = 5


@dataclass
class HeadConfig:
    num_classes: int = 81                 # official convention: foreground classes + 1 (background)
    in_channels: int = 256
    stacked_convs: int = 4
    seg_feat_channels: int = 512
    ins_out_channels: int = 256           # E: dynamic-kernel size = mask-feature channels
    strides: Tuple[int, ...] = (8, 8, 16, 32, 32)
    scale_ranges: Tuple[Tuple[int, int], ...] = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    sigma: float = 0.2
    num_grids: Tuple[int, ...] = (40, 36, 24, 16, 12)
    ins_loss_weight: float = 3.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    cate_loss_weight: float = 1.0

    @property
    def cate_out_channels(self) -> int:
        return self.num_classes - 1


@dataclass
class MaskFeatConfig:
    in_channels: int = 256
    out_channels: int = 128
    start_level: int = 0
    end_level: int = 3
    num_classes: int = 256                # official name; = output channels E (ins_out_channels)


@dataclass
class TestConfig:
    nms_pre: int = 500
    score_thr: float = 0.1
    mask_thr: float = 0.5
    update_thr: float = 0.05
    kernel: str = "gaussian"              # 'gaussian' or 'linear'
    sigma: float = 2.0
    max_per_img: int = 100


@dataclass
class DataConfig:
    mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)   # RGB
    std: Tuple[float, float, float] = (58.395, 57.12, 57.375)
    to_rgb: bool = True
    test_scale: Tuple[int, int] = (1333, 800)                      # (long, short)
    train_scales: Tuple[Tuple[int, int], ...] = ((1333, 800),)
    flip_ratio: float = 0.5
    size_divisor: int = 32
    imgs_per_gpu: int = 2
    workers_per_gpu: int = 2
    train_ann_file: str = ""
    train_img_prefix: str = ""
    val_ann_file: str = ""
    val_img_prefix: str = ""
    test_ann_file: str = ""
    test_img_prefix: str = ""
    train_max_images: Optional[int] = None                         # data.train.max_images: first N images only
    skip_bad: bool = False                                         # data.skip_bad: skip broken images with a warning


@dataclass
class OptimConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: Optional[float] = 35.0
    warmup: Optional[str] = "linear"
    warmup_iters: int = 500
    warmup_ratio: float = 0.01
    lr_steps: Tuple[int, ...] = (27, 33)
    lr_gamma: float = 0.1
    total_epochs: int = 36


@dataclass
class SOLOv2Config:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    mask_feat: MaskFeatConfig = field(default_factory=MaskFeatConfig)
    test: TestConfig = field(default_factory=TestConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    class_names: Optional[List[str]] = None   # from the config (`classes=`/`CLASSES=`), else the dataset
    load_from: Optional[str] = None
    work_dir: Optional[str] = None
    resume_from: Optional[str] = None
    pretrained: Optional[str] = None          # model.pretrained, e.g. 'torchvision://resnet101'
    checkpoint_interval: int = 1              # checkpoint_config.interval (epochs)
    log_interval: int = 50                    # log_config.interval (iterations)
    source: str = ""                          # the file this was read from



class ConfigError(SolovError, ValueError):
    """A config file cannot be read or asks for something this port does not support."""


# ------------------------------------------------------------------------ safe evaluation (no exec)
_CALLS = ("dict", "range", "list", "tuple")
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_WHAT = {ast.Import: "import statement", ast.ImportFrom: "import statement", ast.Attribute: "attribute access",
         ast.Call: "call", ast.Lambda: "lambda", ast.JoinedStr: "f-string"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Evaluator:
    """Evaluates module-level `name = expr` statements; a name evaluates to a copy of its earlier value."""

    def __init__(self, path: str):
        self.path, self.names = path, {}

    def error(self, node: ast.AST, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}:{getattr(node, 'lineno', '?')}: {msg}")

    def refuse(self, node: ast.AST) -> ConfigError:
        src = (ast.unparse(node).splitlines() or [""])[0][:60]
        return self.error(node, f"{_WHAT.get(type(node), type(node).__name__)} '{src}' is not allowed in a config "
                                "file (only literals, earlier names, dict/range/list/tuple() and + - * / // %)")

    def run(self, tree: ast.Module) -> Dict[str, Any]:
        for stmt in tree.body:
            if isinstance(stmt, ast.Expr) and isinstance(getattr(stmt.value, "value", None), str):
                continue                                                        # docstring
            if not isinstance(stmt, ast.Assign) or not all(isinstance(t, ast.Name) for t in stmt.targets):
                raise self.refuse(stmt.value if isinstance(stmt, ast.Expr) else stmt)
            for t in stmt.targets:
                if t.id == "_base_" or t.id in _CALLS:
                    raise self.error(stmt, f"assigning to '{t.id}' is not allowed" if t.id in _CALLS else
                                     "'_base_' config inheritance is not supported; write the whole config in one file")
            try:
                value = self.eval(stmt.value)
            except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
                if isinstance(e, ConfigError):
                    raise
                raise self.error(stmt, f"cannot evaluate: {e}") from None
            self.names.update({t.id: copy.deepcopy(value) for t in stmt.targets})
        return self.names

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.names:
                raise self.error(node, f"name '{node.id}' is not defined (only names assigned earlier can be used)")
            return copy.deepcopy(self.names[node.id])
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](self.eval(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            out = {}
            for k, v in zip(node.keys, node.values):
                out.update(self.mapping(v) if k is None else {self.eval(k): self.eval(v)})
            return out
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
            return self.call(node.func.id, node)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = self.eval(node.left), self.eval(node.right)
            if (_is_num(a) and _is_num(b)) or (isinstance(node.op, ast.Add) and type(a) is type(b)
                                               and isinstance(a, (str, list, tuple))):
                return _BINOPS[type(node.op)](a, b)
            raise self.error(node, f"unsupported operands in '{ast.unparse(node)}': "
                                   f"{type(a).__name__} and {type(b).__name__}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _is_num(v := self.eval(node.operand)):
            return -v
        raise self.refuse(node)

    def mapping(self, node: ast.AST) -> dict:
        if not isinstance(v := self.eval(node), dict):
            raise self.error(node, f"'**{ast.unparse(node)}' is not a dict")
        return v

    def call(self, name: str, node: ast.Call) -> Any:
        args = [self.eval(a) for a in node.args]
        if name == "dict" and len(args) <= 1 and all(isinstance(a, dict) for a in args):
            out = dict(*args)
            for kw in node.keywords:
                out.update(self.mapping(kw.value) if kw.arg is None else {kw.arg: self.eval(kw.value)})
            return out
        if not node.keywords and name == "range" and 1 <= len(args) <= 3 and all(map(_is_int, args)):
            return range(*args)
        if not node.keywords and name in ("list", "tuple") and len(args) <= 1 \
                and all(isinstance(a, (str, list, tuple, set, dict, range)) for a in args):
            return (list if name == "list" else tuple)(*args)
        raise self.error(node, f"bad arguments in '{ast.unparse(node)[:60]}' (allowed: dict(key=..., **d), "
                               "range(ints), list(x), tuple(x))")


def load_config_dict(path) -> Dict[str, Any]:
    """Read a config file WITHOUT executing it -> {top-level name: value}, in file order.

    path: str or os.PathLike. Values are plain Python (dict, list, tuple, set, range, str, int, float, bool,
    None); every use of a name is a copy, so no two entries share mutable objects. Raises ConfigError
    "<path>:<line>: ..." for anything outside the safe subset (imports, calls other than
    dict/range/list/tuple, attribute access, lambdas, f-strings, `_base_`, ...); "<path>: no such config file".
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        with open(path, encoding="utf-8") as f:
            return _Evaluator(path).run(ast.parse(f.read(), filename=path))
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except (UnicodeDecodeError, RecursionError, MemoryError) as e:
        raise ConfigError(f"{path}: cannot read config: {type(e).__name__}") from None


def apply_overrides(cfg_dict: Dict[str, Any], overrides: Iterable[str], source: str = "<overrides>") -> Dict[str, Any]:
    """Return a deep copy of cfg_dict with mmdetection-style overrides applied (cfg_dict is unchanged).

    overrides: strings "dotted.key=value", e.g. "data.imgs_per_gpu=2", "data.train.ann_file=/x/y.json",
    "data.train.pipeline.2.img_scale=(768, 448)". value = ast.literal_eval(text), else the text itself.
    An integer component indexes a list. New keys may be added to existing dicts; a missing top-level key
    becomes a new dict. A missing nested key on the way, or a path through anything but a dict or list,
    raises ConfigError "<source>: override '...': ...".
    """
    out = copy.deepcopy(cfg_dict)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"{source}: override {item!r}: expected 'dotted.key=value'")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = text.strip()
        node = out
        for i, part in enumerate(parts):
            last, where = i == len(parts) - 1, ".".join(parts[:i]) or "the top level"
            if isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                part = int(part)
            elif not isinstance(node, dict) or not (last or i == 0 or part in node):
                why = (f"has no key {part!r}" if isinstance(node, dict) else f"is a list and {part!r} is not a valid "
                       "index" if isinstance(node, list) else f"is not a dict (type {type(node).__name__})")
                raise ConfigError(f"{source}: override {item!r}: {where} {why}")
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    return out


# ------------------------------------------------------------------------ typed, validated config
_MISSING = object()
_NO_DCN = "deformable convolution (DCN) is not supported by this port"
_STEPS = ("LoadImageFromFile", "LoadAnnotations", "Resize", "RandomFlip", "Normalize", "Pad",
          "DefaultFormatBundle", "ImageToTensor", "Collect", "MultiScaleFlipAug")
_SEQ = (list, tuple)
_KINDS = {  # kind -> (test, convert, description)
    "any": (lambda v: True, lambda v: v, ""), "int": (_is_int, int, "an integer"),
    "num": (_is_num, float, "a number"), "bool": (lambda v: isinstance(v, (bool, int)), bool, "a boolean"),
    "str": (lambda v: isinstance(v, str), str, "a string"), "dict": (lambda v: isinstance(v, dict), dict, "a dict"),
    "str?": (lambda v: v is None or isinstance(v, str), lambda v: v, "a string or None"),
    "int?": (lambda v: v is None or _is_int(v), lambda v: v if v is None else int(v), "an integer or None"),
    "names": (lambda v: isinstance(v, _SEQ) and all(isinstance(x, str) for x in v), list, "a list of strings"),
    "ints": (lambda v: isinstance(v, _SEQ) and all(map(_is_int, v)), tuple, "a list of integers"),
    "rgb": (lambda v: isinstance(v, _SEQ) and len(v) == 3 and all(map(_is_num, v)), lambda v: tuple(map(float, v)),
            "a list of 3 numbers"),
    "scale": (lambda v: isinstance(v, tuple) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v), tuple,
              "a (long, short) tuple of positive integers"),
    "ranges": (lambda v: isinstance(v, _SEQ) and all(isinstance(p, _SEQ) and len(p) == 2 and all(map(_is_int, p))
                                                     for p in v), lambda v: tuple(map(tuple, v)), "(low, high) pairs"),
}


class _Sec:
    """One config dict and its dotted location; checked access whose errors name the file and the key."""

    def __init__(self, path: str, d: dict, where: str = ""):
        self.path, self.d, self.where = path, d, where

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.where + '.' if self.where else ''}{key}: {msg}")

    def check(self, key: str, value: Any, kind: str) -> Any:
        """value (found at `key`) checked and converted as `kind`, a _KINDS key."""
        test, convert, desc = _KINDS[kind]
        if not test(value):
            raise self.fail(key, f"must be {desc}, got {value!r}")
        return convert(value)

    def get(self, key: str, kind: str = "any", default: Any = _MISSING) -> Any:
        """d[key] checked as `kind`; `default` if absent, else required."""
        if key not in self.d and default is _MISSING:
            raise self.fail(key, "missing (required)")
        return self.check(key, self.d[key], kind) if key in self.d else default

    def one_of(self, key: str, allowed: tuple, default: Any = _MISSING) -> Any:
        """d[key] (a list compares as a tuple), which must be one of `allowed`."""
        v = self.get(key, "any", default)
        v = tuple(v) if isinstance(v, list) else v
        if v not in allowed or isinstance(v, bool) != isinstance(allowed[0], bool):
            raise self.fail(key, f"{v!r} is not supported by this port (supported: {', '.join(map(repr, allowed))})")
        return v

    def sub(self, key: str, default: Any = _MISSING) -> "_Sec":
        return _Sec(self.path, self.get(key, "dict", default), f"{self.where + '.' if self.where else ''}{key}")

    def forbid(self, *keys: str, msg: str = "") -> None:
        """Settings that must be absent, falsy or a list/tuple of falsy values (e.g. stage_with_dcn)."""
        for key in keys:
            if self.d.get(key) and not (isinstance(self.d[key], (list, tuple)) and not any(self.d[key])):
                raise self.fail(key, msg or f"{self.d[key]!r} is not supported by this port")


def _model(top: _Sec) -> tuple:
    """model.* -> (BackboneConfig, NeckConfig, HeadConfig, MaskFeatConfig, model.pretrained)."""
    model = top.sub("model")
    model.one_of("type", ("SOLOv2",))
    b = model.sub("backbone")
    b.forbid("dcn", "stage_with_dcn", msg=_NO_DCN)
    b.one_of("type", ("ResNet",)), b.one_of("num_stages", (4,), 4), b.one_of("style", ("pytorch",), "pytorch")
    b.sub("norm_cfg", {}).one_of("type", ("BN",), "BN")
    backbone = BackboneConfig(b.one_of("depth", (18, 34, 50, 101)), b.one_of("frozen_stages", (-1, 0, 1, 2, 3, 4), -1),
                              b.get("norm_eval", "bool", True), b.one_of("out_indices", ((0, 1, 2, 3),), (0, 1, 2, 3)))
    n = model.sub("neck")
    n.one_of("type", ("FPN",)), n.one_of("start_level", (0,), 0), n.one_of("end_level", (-1, 4), -1)
    n.forbid("add_extra_convs", "conv_cfg", "norm_cfg", "activation")
    base = 64 if backbone.depth < 50 else 256
    neck = NeckConfig(n.one_of("in_channels", (tuple(base << i for i in range(4)),)), n.get("out_channels", "int"),
                      n.one_of("num_outs", (5,)))
    h = model.sub("bbox_head")
    if h.get("type", "str") != "SOLOv2Head":
        raise h.fail("type", f"{h.d['type']!r} is not supported by this port (only 'SOLOv2Head'; "
                             "SOLOv2LightHead, SOLOHead and DecoupledSOLOHead are not)")
    h.forbid("use_dcn_in_tower", "type_dcn", msg=_NO_DCN)
    h.forbid("conv_cfg")
    li, lc = h.sub("loss_ins"), h.sub("loss_cate")
    li.one_of("type", ("DiceLoss",)), lc.one_of("type", ("FocalLoss",)), lc.one_of("use_sigmoid", (True,), True)
    head = HeadConfig(  # defaults: those of the official SOLOv2Head signature / FocalLoss
        h.get("num_classes", "int"), h.get("in_channels", "int"), h.get("stacked_convs", "int", 4),
        h.get("seg_feat_channels", "int", 256), h.get("ins_out_channels", "int", 64),
        h.get("strides", "ints", (4, 8, 16, 32, 64)),
        h.get("scale_ranges", "ranges", ((8, 32), (16, 64), (32, 128), (64, 256), (128, 512))),
        h.get("sigma", "num", 0.2), h.get("num_grids", "ints"), li.get("loss_weight", "num"),
        lc.get("gamma", "num", 2.0), lc.get("alpha", "num", 0.25), lc.get("loss_weight", "num", 1.0))
    if head.num_classes < 2:
        raise h.fail("num_classes", "must be >= 2 (number of classes + 1 for background)")
    for key in ("strides", "scale_ranges", "num_grids"):
        if len(getattr(head, key)) != neck.num_outs:
            raise h.fail(key, f"needs {neck.num_outs} entries, one per FPN level")
    m = model.sub("mask_feat_head")
    m.one_of("type", ("MaskFeatHead",))
    if m.d.get("conv_cfg") is not None:
        raise m.fail("conv_cfg", _NO_DCN if "DCN" in repr(m.d["conv_cfg"]) else "only conv_cfg=None is supported")
    m.sub("norm_cfg").one_of("type", ("GN",)), m.sub("norm_cfg").one_of("num_groups", (32,))
    mask_feat = MaskFeatConfig(m.get("in_channels", "int"), m.get("out_channels", "int"), m.one_of("start_level", (0,)),
                               m.one_of("end_level", (3,)), m.get("num_classes", "int"))
    for sec, key, got, want, what in (
            (m, "num_classes", mask_feat.num_classes, head.ins_out_channels, "model.bbox_head.ins_out_channels"),
            (m, "in_channels", mask_feat.in_channels, neck.out_channels, "model.neck.out_channels"),
            (h, "in_channels", head.in_channels, neck.out_channels, "model.neck.out_channels")):
        if got != want:
            raise sec.fail(key, f"{got} must equal {what} ({want})")
    return backbone, neck, head, mask_feat, model.get("pretrained", "str?", None)


def _steps(top: _Sec, data: _Sec, split: str) -> List[_Sec]:
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
            out.append(_Sec(top.path, s, f"{where}[{i}]"))
            if s["type"] == "MultiScaleFlipAug":
                todo.append((f"{where}[{i}].transforms", s.get("transforms")))
    return out


def _data(top: _Sec) -> DataConfig:
    data = top.sub("data")
    train, test = _steps(top, data, "train"), _steps(top, data, "test")

    def find(steps: List[_Sec], kind: str) -> List[_Sec]:
        return [s for s in steps if s.d["type"] == kind]
    norm = (find(test, "Normalize") or [top.sub("img_norm_cfg")])[0]
    for s in find(train + test, "Resize"):
        s.one_of("keep_ratio", (True,), True), s.forbid("ratio_range")
    ts = (find(test, "MultiScaleFlipAug") or [s for s in find(test, "Resize") if "img_scale" in s.d]
          or [_Sec(top.path, {}, "data.test.pipeline")])[0]
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
    flip = (find(train, "RandomFlip") or [_Sec(top.path, {}, "")])[0]
    flip.one_of("direction", ("horizontal",), "horizontal")
    pad = (find(train, "Pad") or find(test, "Pad") or [_Sec(top.path, {}, "data.train.pipeline")])[0]
    if pad.get("size_divisor", "int") % 32:
        raise pad.fail("size_divisor", "must be a multiple of 32")
    files = []
    for split in ("train", "val", "test"):
        ds = data.sub(split, None if split != "train" else _MISSING)
        if ds.d is not None:
            ds.one_of("type", ("CocoDataset",))
        files += [ds.get(key, "str", "") if ds.d is not None else "" for key in ("ann_file", "img_prefix")]
    max_images = data.sub("train").get("max_images", "int?", None)
    if max_images is not None and max_images < 1:
        raise data.fail("train.max_images", "must be >= 1")
    return DataConfig(norm.get("mean", "rgb"), norm.get("std", "rgb"), norm.get("to_rgb", "bool", True),
                      test_scale, train_scales, flip.check("flip_ratio", flip.d.get("flip_ratio") or 0.0, "num"),
                      pad.get("size_divisor", "int"), data.get("imgs_per_gpu", "int"),
                      data.get("workers_per_gpu", "int"), *files, max_images, data.get("skip_bad", "bool", False))


def _optim(top: _Sec) -> OptimConfig:
    o, lc = top.sub("optimizer"), top.sub("lr_config")
    o.one_of("type", ("SGD",)), o.forbid("paramwise_options", "nesterov")
    oc = top.sub("optimizer_config", {})
    clip = oc.sub("grad_clip") if oc.d.get("grad_clip") is not None else None
    if clip:
        clip.one_of("norm_type", (2,), 2)
    lc.one_of("policy", ("step",)), lc.one_of("by_epoch", (True,), True)
    warmup, total = lc.one_of("warmup", (None, "linear"), None), top.get("total_epochs", "int")
    if warmup and lc.get("warmup_iters", "int") <= 0:
        raise lc.fail("warmup_iters", "must be > 0 when warmup is set")
    step = lc.get("step")                                   # an int k means "every k epochs"
    return OptimConfig(o.get("lr", "num"), o.get("momentum", "num", 0.0), o.get("weight_decay", "num", 0.0),
                       clip and clip.get("max_norm", "num"), warmup, lc.get("warmup_iters", "int", 0),
                       lc.get("warmup_ratio", "num", 0.1),
                       tuple(range(step, total, step)) if _is_int(step) and step > 0 else lc.get("step", "ints"),
                       lc.get("gamma", "num", 0.1), total)


def load_config(path, overrides: Iterable[str] = ()) -> SOLOv2Config:
    """Read an official-style SOLOv2 config (str or os.PathLike), apply "a.b=value" overrides, validate.

    Returns SOLOv2Config. Raises ConfigError "<path>: <dotted.key>: <reason>" for missing or malformed
    settings and for settings this port does not support (DCN, other heads, 'range' multi-scale, ...).
    """
    path = os.fspath(path)
    top = _Sec(path, apply_overrides(load_config_dict(path), overrides, source=path))
    backbone, neck, head, mask_feat, pretrained = _model(top)
    t = top.sub("test_cfg")
    test = TestConfig(t.get("nms_pre", "int"), t.get("score_thr", "num"), t.get("mask_thr", "num"),
                      t.get("update_thr", "num"), t.one_of("kernel", ("gaussian", "linear")), t.get("sigma", "num"),
                      t.get("max_per_img", "int"))
    data, optim = _data(top), _optim(top)
    sec, key = next(((s, k) for s, k in ((top.sub("data").sub("train"), "classes"), (top, "classes"), (top, "CLASSES"))
                     if k in s.d), (top, "classes"))
    names = sec.get(key, "names", None)
    if names is not None and len(names) != head.num_classes - 1:
        raise sec.fail(key, f"{len(names)} class names, but model.bbox_head.num_classes={head.num_classes} "
                            "(must be the number of classes + 1 for background)")
    return SOLOv2Config(backbone, neck, head, mask_feat, test, data, optim, names, top.get("load_from", "str?", None),
                        top.get("work_dir", "str?", None), top.get("resume_from", "str?", None), pretrained,
                        top.sub("checkpoint_config", {}).get("interval", "int", 1),
                        top.sub("log_config", {}).get("interval", "int", 50), source=path)
