"""The JSON beside an exported model (`<model file>.json`): everything needed to run it without the config.

    {"solov2_export": 1, "model_format": "ONNX", "model_file": "solov2.onnx",
     "input": {"shape": [1, 3, H, W] (a dynamic MindIR: [-1, 3, -1, -1]), "dtype": "float32", "layout": ...},
     "outputs": [{"name": "cate_scores", "shape": [1, cells, C]}, {"name": "kernels", ...}, {"name": "mask_feat"...}],
     "preprocess": {"test_scale": [1333, 800], "mean": [...], "std": [...], "to_rgb": true, "size_divisor": 32},
     "class_names": [...], "test_cfg": {...}, "head": {"num_grids": [...], "strides": [...]},
     "source": {"config": ..., "checkpoint": ..., "checkpoint_sha256": ...}, "software": {...},
     "model_sha256": ...}
"""
import dataclasses
import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from solov2.config import SOLOv2Config, TestConfig
from solov2.errors import SolovError, check_file, read_json

VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("cate_scores", "kernels", "mask_feat")


def sidecar_path(model_path) -> Path:
    """`<model file>.json` (model.onnx -> model.onnx.json: a .mindir and an .onnx of one model do not collide)."""
    return Path(str(model_path) + ".json")


def file_sha256(path) -> str:
    """The hex SHA-256 of the file at `path`, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_shape(input_hw: Optional[Tuple[int, int]]) -> List[int]:
    """[1, 3, H, W] of a static export; [-1, 3, -1, -1] (N, H and W unknown) of a dynamic one (input_hw None)."""
    return [1, 3, *input_hw] if input_hw else [-1, 3, -1, -1]


def output_shapes(cfg: SOLOv2Config, input_hw: Optional[Tuple[int, int]]) -> List[Tuple[int, ...]]:
    """(1, cells, C), (1, cells, E), (1, E, H/4, W/4) of the in-graph `SOLOv2Eval` at input (1, 3, H, W); -1 for
    the sizes a dynamic export (input_hw None) leaves unknown."""
    cells = sum(s * s for s in cfg.head.num_grids)
    e = cfg.mask_feat.num_classes
    n, h, w = (1, input_hw[0] // 4, input_hw[1] // 4) if input_hw else (-1, -1, -1)
    return [(n, cells, cfg.head.cate_out_channels), (n, cells, cfg.head.ins_out_channels), (n, e, h, w)]


def shapes_match(shapes, expected) -> bool:
    """Shapes equal to `expected`, where -1 in `expected` matches any size."""
    return len(shapes) == len(expected) and all(
        len(s) == len(e) and all(v == x or x == -1 for v, x in zip(s, e)) for s, e in zip(shapes, expected))


def make_sidecar(cfg: SOLOv2Config, *, model_format: str, model_file: str, input_hw: Optional[Tuple[int, int]],
                 class_names: List[str], source: Dict[str, Optional[str]], software: Dict[str, str]) -> dict:
    """The sidecar (a JSON object, the module docstring's layout) of a model exported from cfg; input_hw (H, W) of
    a static export, None for a dynamic one."""
    d = cfg.data
    return {
        "solov2_export": VERSION, "model_format": model_format, "model_file": model_file,
        "input": {"shape": input_shape(input_hw), "dtype": "float32",
                  "layout": "NCHW, normalised, the resized image at the top left, zero padding bottom/right"},
        "outputs": [{"name": n, "shape": list(s)} for n, s in zip(OUTPUT_NAMES, output_shapes(cfg, input_hw))],
        "preprocess": {"test_scale": list(d.test_scale), "mean": list(d.mean), "std": list(d.std),
                       "to_rgb": d.to_rgb, "size_divisor": d.size_divisor},
        "class_names": list(class_names),
        "test_cfg": dataclasses.asdict(cfg.test),
        "head": {"num_grids": list(cfg.head.num_grids), "strides": list(cfg.head.strides)},
        "source": source, "software": software,
    }


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """A read and checked sidecar. input_hw: the static input size, None for a dynamic export (any size)."""
    model_format: str
    input_hw: Optional[Tuple[int, int]]
    output_shapes: Tuple[Tuple[int, ...], ...]
    test_scale: Tuple[int, int]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    to_rgb: bool
    size_divisor: int
    class_names: Tuple[str, ...]
    test_cfg: dict
    num_grids: Tuple[int, ...]
    strides: Tuple[int, ...]
    model_sha256: str


def read_sidecar(model_path) -> ExportSpec:
    """The sidecar of `model_path`; SolovError '<sidecar>: ...' when it is missing, malformed or for another file."""
    path = sidecar_path(model_path)
    check_file(path, "file", hint="; an exported model needs the JSON that export.py writes beside it")
    s = read_json(path, "export sidecar")
    if not isinstance(s, dict):
        raise SolovError(f"{path}: malformed export sidecar (not a JSON object)")
    try:
        if s.get("solov2_export") != VERSION:
            raise SolovError(f"{path}: not a SOLOv2 export sidecar of version {VERSION}")
        fmt = s["model_format"]
        if fmt != Path(model_path).suffix.lstrip(".").upper():
            raise SolovError(f"{path}: describes a {fmt} model, not {Path(model_path).name}")
        shape = s["input"]["shape"]
        p = s["preprocess"]
        dynamic = [int(v) for v in shape] == input_shape(None)
        spec = ExportSpec(model_format=fmt, input_hw=None if dynamic else (int(shape[2]), int(shape[3])),
                          output_shapes=tuple(tuple(int(v) for v in o["shape"]) for o in s["outputs"]),
                          test_scale=tuple(int(v) for v in p["test_scale"]), mean=tuple(map(float, p["mean"])),
                          std=tuple(map(float, p["std"])), to_rgb=bool(p["to_rgb"]),
                          size_divisor=int(p["size_divisor"]),
                          class_names=tuple(map(str, s["class_names"])), test_cfg=dict(s["test_cfg"]),
                          num_grids=tuple(int(v) for v in s["head"]["num_grids"]),
                          strides=tuple(int(v) for v in s["head"]["strides"]),
                          model_sha256=str(s["model_sha256"]))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise SolovError(f"{path}: malformed export sidecar ({type(e).__name__}: {e})") from None
    _check_preprocess(spec, path)
    cells = sum(g * g for g in spec.num_grids)
    if len(spec.output_shapes) != 3 or len(spec.output_shapes[0]) != 3 or spec.output_shapes[0][1] != cells \
            or spec.output_shapes[0][2] != len(spec.class_names):
        raise SolovError(f"{path}: outputs {spec.output_shapes} do not match {len(spec.class_names)} classes and "
                         f"grids {spec.num_grids}")
    return spec


def _check_preprocess(spec: ExportSpec, path: Path) -> None:
    """SolovError '<sidecar>: ...' for settings the predictor would fail on later, deep in NumPy (a zero divisor,
    a mean of 2 values) or run with silently (a zero std): the sidecar was edited or is not export.py's."""
    problems = []
    if spec.size_divisor < 1:
        problems.append(f"size_divisor {spec.size_divisor} is not a positive integer")
    if len(spec.mean) != 3 or len(spec.std) != 3 or min(spec.std, default=0) <= 0:
        problems.append(f"mean {list(spec.mean)} and std {list(spec.std)} must be 3 values each, std > 0")
    if len(spec.test_scale) != 2 or min(spec.test_scale) < 1:
        problems.append(f"test_scale {list(spec.test_scale)} must be 2 positive integers")
    if spec.input_hw is None and spec.model_format == "ONNX":
        problems.append("an ONNX export has one static input size, not [-1, 3, -1, -1]")
    if spec.input_hw is not None and spec.size_divisor >= 1 and \
            any(v < 1 or v % spec.size_divisor for v in spec.input_hw):
        problems.append(f"input size {spec.input_hw[0]}x{spec.input_hw[1]} is not a positive multiple of "
                        f"size_divisor {spec.size_divisor}")
    if problems:
        raise SolovError(f"{path}: malformed export sidecar: {'; '.join(problems)}")


def check_config(spec: ExportSpec, cfg: SOLOv2Config, model_path) -> None:
    """SolovError '<config>: <setting> ... differs from the export's ...' unless cfg describes the exported model:
    the same outputs (classes, grid cells, E), grids, strides and test preprocessing."""
    d = cfg.data
    ours = {"outputs (1, cells, classes), (1, cells, E), (1, E, H/4, W/4)": tuple(output_shapes(cfg, spec.input_hw)),
            "head num_grids": tuple(cfg.head.num_grids), "head strides": tuple(cfg.head.strides),
            "test img_scale": tuple(d.test_scale), "img_norm_cfg mean": tuple(d.mean), "img_norm_cfg std": tuple(d.std),
            "img_norm_cfg to_rgb": d.to_rgb, "Pad size_divisor": d.size_divisor}
    theirs = dict(zip(ours, (spec.output_shapes, spec.num_grids, spec.strides, spec.test_scale, spec.mean, spec.std,
                             spec.to_rgb, spec.size_divisor)))
    for name, value in ours.items():
        if value != theirs[name]:
            raise SolovError(f"{cfg.source or 'config'}: {name} {value} differs from the exported model's "
                             f"{theirs[name]} ({sidecar_path(model_path)}): not the config of this model")


def test_settings(spec: ExportSpec, overrides, source: str) -> TestConfig:
    """The sidecar's test_cfg with `test_cfg.<key>=value` overrides, validated as a config's test_cfg."""
    from solov2.config.schema import test_config_from
    return test_config_from(spec.test_cfg, overrides, source)
