"""`export.py`: the in-graph part of `SOLOv2Eval` (backbone, neck, heads, sigmoid, points-NMS) to MindIR or ONNX,
with its sidecar JSON.

    python export.py --config CFG --checkpoint CKPT [--format MINDIR|ONNX] [--input-size H W] [--out FILE] [--force]

MINDIR exports the native cells (the graph MindSpore itself runs) but for the stem pool (`StemMaxPool`, equal).
Without --input-size and without deformable convolutions it declares N, H and W unknown, so one file serves every
image size; otherwise it is static, by default at the config's test scale padded to size_divisor. ONNX exports the
portable formulation (`solov2.models.portable`) at one static size, since MindSpore's ONNX exporter refuses
GroupNorm, the resizes, the pools, LinSpace and CumSum. Unless `check=False`, the exported file is run on test
inputs and must agree with the native network (1e-4 relative); otherwise nothing is written.
"""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from solov2.config import SOLOv2Config, load_config
from solov2.config.section import MAX_IMAGE_SIDE
from solov2.data.transforms import round_up
from solov2.deploy.sidecar import INPUT_NAME, OUTPUT_NAMES, file_sha256, make_sidecar, sidecar_path
from solov2.errors import SolovError, check_file, first_line
from solov2.files import atomic_write, check_not_an_input, check_writable, restored_on_failure, write_json_atomic

FORMATS = ("MINDIR", "ONNX")
SUFFIX = {"MINDIR": ".mindir", "ONNX": ".onnx"}
CHECK_TOLERANCE = 1e-4   # relative to each output's largest magnitude


def default_input_size(cfg: SOLOv2Config) -> Tuple[int, int]:
    """(H, W) of a landscape image at the test scale, padded: (1333, 800) -> (800, 1344)."""
    div = cfg.data.size_divisor
    long_edge, short_edge = max(cfg.data.test_scale), min(cfg.data.test_scale)
    return round_up(short_edge, div), round_up(long_edge, div)


def check_input_size(hw: Sequence[int], divisor: int) -> Tuple[int, int]:
    """--input-size H W: positive multiples of `divisor`, each at most MAX_IMAGE_SIDE (as an image scale side)."""
    if len(hw) != 2 or any(int(v) != v or v < divisor or v % divisor or v > MAX_IMAGE_SIDE for v in hw):
        raise SolovError(f"--input-size {' '.join(map(str, hw))}: H and W must be multiples of {divisor} (the "
                         f"config's Pad size_divisor) from {divisor} to {MAX_IMAGE_SIDE}")
    return int(hw[0]), int(hw[1])


def test_input(input_hw: Tuple[int, int]) -> np.ndarray:
    """(1, 3, H, W) float32: a smooth pattern plus noise in the range of normalised photos (deterministic)."""
    h, w = input_hw
    yy, xx = np.meshgrid(np.linspace(-2, 2, h, dtype=np.float32), np.linspace(-2, 2, w, dtype=np.float32),
                         indexing="ij")
    noise = np.random.default_rng(0).standard_normal((3, h, w)).astype(np.float32) * 0.5
    return (np.stack([np.sin(2 * xx) + yy, np.cos(3 * yy) - xx, xx * yy]) + noise)[None]


def pre_nms_scores(net, x: np.ndarray) -> np.ndarray:
    """(cells, C) float32 category scores of SOLOv2 `net` on x (1, 3, H, W) before points-NMS: sigmoid(logits),
    the values points-NMS compares (`relative_differences` tells near-ties from them)."""
    import mindspore as ms
    from solov2.models.solov2 import flatten_levels
    cates, _, _ = net.features(ms.Tensor(x))
    return flatten_levels([ms.ops.sigmoid(c) for c in cates]).asnumpy()[0]


def relative_differences(native: Sequence[np.ndarray], exported: Sequence[np.ndarray], num_grids: Sequence[int],
                         pre_nms: np.ndarray) -> Dict[str, float]:
    """max |exported - native| / max |native| per output (cate_scores, kernels, mask_feat: (1, cells, C),
    (1, cells, E), (1, E, h, w) or without the batch axis), and for the scores the cells that points-NMS kept in
    only one of the two: 'nms_flips' of them, 'nms_near_ties' of those explained by a near-tie, and
    'nms_flip_score', the largest score of a flip that is not.

    A near-tie: a neighbour that points-NMS compares the cell with (top, left, top-left, in the grid of its level:
    num_grids) has a score within CHECK_TOLERANCE (relative to the largest score) of the cell's in `pre_nms`, the
    native scores before points-NMS (`pre_nms_scores`), so float rounding decides which of the two survives.
    Flat regions of an image give such ties (with random weights even above score_thr). A flip below
    test_cfg.score_thr cannot change the instances: get_seg_single drops those cells first.
    """
    diffs = {}
    for name, n, e in zip(OUTPUT_NAMES, native, exported):
        if name == "cate_scores":
            flip = (n == 0) != (e == 0)
            tied = flip & _near_tie(pre_nms, num_grids, CHECK_TOLERANCE * np.abs(n).max()).reshape(flip.shape)
            kept = np.maximum(n, e)
            n, e = np.where(flip, 0, n), np.where(flip, 0, e)
        diffs[name] = float(np.abs(e - n).max() / max(np.abs(n).max(), 1e-12))
    diffs["nms_flips"], diffs["nms_near_ties"] = int(flip.sum()), int(tied.sum())
    untied = flip & ~tied
    diffs["nms_flip_score"] = float(kept[untied].max()) if untied.any() else 0.0
    return diffs


def _near_tie(scores: np.ndarray, num_grids: Sequence[int], tol: float) -> np.ndarray:
    """scores (cells, C) -> bool (cells, C): a top, left or top-left neighbour (same level and class) scores within
    tol of the cell."""
    out, start = np.zeros(scores.shape, bool), 0
    for s in num_grids:
        g = scores[start:start + s * s].reshape(s, s, -1)
        tie = np.zeros(g.shape, bool)
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            tie[di:, dj:] |= np.abs(g[:s - di, :s - dj] - g[di:, dj:]) <= tol
        out[start:start + s * s] = tie.reshape(s * s, -1)
        start += s * s
    return out


def run_exporter(eval_net, *, fmt: str, input_hw: Optional[Tuple[int, int]], file: Path) -> None:
    """MindSpore's exporter of eval_net at input (1, 3, H, W) (input_hw None: N, H, W unknown; eval_net then has
    dynamic inputs) into `file`, which must lie in a private temporary folder: the exporter chmods the folder it
    writes into (0700) and leaves its file read-only (0400)."""
    import mindspore as ms
    x = (ms.Tensor(np.zeros((1, 3, *input_hw), np.float32)) if input_hw
         else ms.Tensor(shape=[None, 3, None, None], dtype=ms.float32))
    try:
        if fmt == "ONNX":
            ms.onnx.export(eval_net, x, file_name=str(file), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES))
        else:
            ms.export(eval_net, x, file_name=str(file), file_format="MINDIR")
    except (RuntimeError, ValueError, TypeError) as e:
        raise SolovError(f"{file.name}: MindSpore's {fmt} exporter failed: {first_line(e)}") from None
    written = sorted(p.name for p in file.parent.iterdir())
    if written != [file.name] or file.stat().st_size == 0:   # > 2 GB models go to extra files: not supported here
        raise SolovError(f"{file.name}: MindSpore's {fmt} exporter wrote {written or 'nothing'}, not one model file")


def check_sizes(input_hw: Optional[Tuple[int, int]], cfg: SOLOv2Config) -> List[Tuple[int, int]]:
    """The input sizes the export check runs: the static size, or for a dynamic export the padded test scale and a
    smaller landscape size (half, padded), so that a size baked into the graph shows."""
    if input_hw:
        return [input_hw]
    h, w = default_input_size(cfg)
    div = cfg.data.size_divisor
    return [(h, w), (round_up(h // 2, div), round_up(w // 2, div))]


def check_export(native_eval, file: Path, input_hw: Optional[Tuple[int, int]], sizes: Sequence[Tuple[int, int]],
                 cfg: SOLOv2Config) -> Dict[str, float]:
    """Run the exported `file` (static input_hw, or None: dynamic) and the native network on `test_input` of each
    size: the worst `relative_differences` (`check_runtime` has made sure the file can run here). SolovError when
    they differ by more than CHECK_TOLERANCE or points-NMS keeps a cell above cfg's score_thr in only one of them
    without a near-tie."""
    import mindspore as ms
    from solov2.deploy.runtimes import network_runner
    run = network_runner(file, input_hw)
    diffs: Dict[str, float] = {}
    for hw in sizes:
        x = test_input(hw)
        d = relative_differences([o.asnumpy() for o in native_eval(ms.Tensor(x))], run(x), cfg.head.num_grids,
                                 pre_nms_scores(native_eval.net, x))
        diffs = {k: max(v, diffs.get(k, v)) for k, v in d.items()}
    worst = max(OUTPUT_NAMES, key=diffs.get)
    if diffs[worst] > CHECK_TOLERANCE:
        raise SolovError(f"{file.name}: the exported network differs from the native one ({worst}: "
                         f"{diffs[worst]:.2e} relative > {CHECK_TOLERANCE:g}); nothing written")
    score_thr = cfg.test.score_thr
    if diffs["nms_flip_score"] > score_thr:
        raise SolovError(f"{file.name}: the exported network differs from the native one (points-NMS keeps a cell "
                         f"of score {diffs['nms_flip_score']:.3g} > score_thr {score_thr:g} in only one of them, and no "
                         "neighbour ties with it); nothing written")
    return diffs


def check_runtime(fmt: str) -> None:
    """Before any work: the export check can run a `fmt` model here (an ONNX one needs onnxruntime)."""
    if fmt == "ONNX":
        from solov2.deploy.runtimes import require_onnxruntime
        require_onnxruntime("--format ONNX: the export check", hint=" (or pass --no-check to write it unchecked)")


def install(file: Path, out: Path, sidecar: dict) -> None:
    """Copy the exported `file` to `out` and write the sidecar beside it, both atomically: `out` gets the permissions
    of a plain open(). Both are written in full before either replaces an earlier one, so a failure (a full disk,
    Ctrl-C) leaves the earlier model and its sidecar as they were, also when the model alone could not be renamed
    into place (the earlier sidecar is put back: never a sidecar beside another model)."""
    side = sidecar_path(out)
    with restored_on_failure(side) as replacing, atomic_write(out) as tmp:
        shutil.copyfile(file, tmp)
        with open(tmp, "rb+") as f:   # on disk before the sidecar that describes it
            os.fsync(f.fileno())
        replacing()
        write_json_atomic(side, dict(sidecar, model_sha256=file_sha256(tmp)), indent=1)


def export_model(config: str, checkpoint: str, *, fmt: str = "MINDIR", input_size: Optional[Sequence[int]] = None,
                 out: Optional[str] = None, force: bool = False, overrides: Sequence[str] = (),
                 check: bool = True, start_context: Callable[[], None]) -> Path:
    """Export CONFIG + CHECKPOINT (see the module doc). Returns the model's path (the sidecar is `<path>.json`).
    start_context: sets the MindSpore context (the command's `RuntimeFlags.start`); called once the inputs have
    been checked, before MindSpore is imported."""
    fmt = fmt.upper()
    if fmt not in FORMATS:
        raise SolovError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    cfg = load_config(config, overrides)
    deformable = any(dcn is not None for dcn in (cfg.backbone.dcn, cfg.head.dcn, cfg.mask_feat.dcn))
    if input_size:
        hw = check_input_size(input_size, cfg.data.size_divisor)
    else:   # MindSpore's deformable operators cannot infer unknown H and W; ONNX is exported static
        hw = default_input_size(cfg) if deformable or fmt == "ONNX" else None
    size_name = f"{hw[0]}x{hw[1]}" if hw else "dynamic"
    path = Path(out) if out else Path(f"{Path(checkpoint).stem}_{size_name}{SUFFIX[fmt]}")
    if path.suffix != SUFFIX[fmt]:   # MindSpore's exporter and loader go by the lower-case suffix
        raise SolovError(f"{path}: a {fmt} export must end in {SUFFIX[fmt]} (lower case)")
    if check:
        check_runtime(fmt)
    check_not_an_input([path, sidecar_path(path)], {"CONFIG": config, "CHECKPOINT": checkpoint,
                                                    "checkpoint sidecar": f"{checkpoint}.json"})
    check_writable(path, force)
    check_writable(sidecar_path(path), force)
    check_file(checkpoint, "checkpoint")
    start_context()
    import mindspore as ms
    from solov2.checkpoint import load_weights
    from solov2.inference import resolve_class_names
    from solov2.models.solov2 import SOLOv2Eval, build_model
    native = build_model(cfg)
    load_weights(native, checkpoint)
    native.set_train(False)
    # The exported cells: the same parameters in the exportable formulation (MINDIR: the stem pool only).
    net = build_model(cfg, portable=fmt == "ONNX", zero_pad_pool=True)
    not_loaded, unused = ms.load_param_into_net(net, native.parameters_dict(), strict_load=True)
    if not_loaded or unused:   # the exportable cells keep every parameter name: a bug if not
        raise AssertionError(f"exportable model parameters differ: {not_loaded[:3]} {unused[:3]}")
    net.set_train(False)
    sidecar = make_sidecar(cfg, model_format=fmt, model_file=path.name, input_hw=hw,
                           class_names=resolve_class_names(cfg, checkpoint),
                           source={"config": str(Path(config).absolute()),
                                   "checkpoint": str(Path(checkpoint).absolute()),
                                   "checkpoint_sha256": file_sha256(checkpoint)},
                           software={"solov2": _version(), "mindspore": ms.__version__})
    with tempfile.TemporaryDirectory(dir=path.absolute().parent, prefix=f".{path.name}.") as tmp_dir:
        tmp = Path(tmp_dir) / path.name
        run_exporter(SOLOv2Eval(net, dynamic_shape=hw is None), fmt=fmt, input_hw=hw, file=tmp)
        diffs = (check_export(SOLOv2Eval(native, dynamic_shape=hw is None), tmp, hw, check_sizes(hw, cfg), cfg)
                 if check else None)
        install(tmp, path, sidecar)
    shape = f"1x3x{hw[0]}x{hw[1]}" if hw else "Nx3xHxW, any size"
    print(f"{config} + {checkpoint} -> {path} ({fmt}, input {shape}) and {sidecar_path(path)}")
    if diffs:
        print("checked against the native network: max relative difference "
              + ", ".join(f"{k} {diffs[k]:.1e}" for k in OUTPUT_NAMES)
              + f"; points-NMS kept {diffs['nms_flips']} cell(s) in only one of them ({diffs['nms_near_ties']} "
                f"near-tie(s) of neighbours; the others score <= {diffs['nms_flip_score']:.1e})")
    return path


def _version() -> str:
    from solov2 import __version__
    return __version__
