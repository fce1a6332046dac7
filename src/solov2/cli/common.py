"""What every command line shares: one-line errors with exit code 2, the shared flags, positional forms.

The command bodies (cli/train, cli/predict, cli/evaluate, cli/convert) parse with these helpers, then call one
function of the package; the root scripts (train.py, test.py, ...) only call their `main`.
"""
import argparse
import math
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from solov2.engine.runtime import RuntimeFlags
from solov2.errors import SolovError, check_file, failure_line

DEBUG_VAR = "SOLOV2_DEBUG"


def cli_main(fn: Callable[[], Optional[int]]) -> None:
    """Run a CLI body; expected failures become one line `error: <message>` on stderr and exit code 2.

    Expected: SolovError (bad input we detected), OSError (missing or read-only folders, full disk), MemoryError,
    and the ValueError / RuntimeError / cv2.error that MindSpore and OpenCV raise for unusable settings (e.g.
    `--device_target Ascend` on a CPU-only build). SOLOV2_DEBUG=1 re-raises them with the traceback; other
    exceptions (bugs) always keep theirs.
    """
    import cv2
    expected = (SolovError, OSError, MemoryError, ValueError, RuntimeError, cv2.error)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        rc = fn()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except expected as e:
        if os.environ.get(DEBUG_VAR) == "1":
            raise
        hint = "" if isinstance(e, SolovError) else f" (set {DEBUG_VAR}=1 for the traceback)"
        print(f"error: {failure_line(e)}{hint}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rc or 0)


def _interrupt(signum, frame):
    """SIGTERM ends a run as Ctrl-C does (partial results kept, `interrupted`, exit 130). It must: every MindSpore
    graph run installs its own SIGINT handler (DefaultIntHandler in libmindspore_common), which turns Ctrl-C into
    kill(getpid(), SIGTERM), so after the first network call a Ctrl-C arrives here. Python runs this between
    bytecodes, i.e. once the current MindSpore call has returned; a second SIGTERM (or Ctrl-C, which MindSpore
    turns into one) meanwhile kills the process at once, as before."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt


def check_flag_range(flag: str, value, low, high) -> None:
    """A number given on the command line is checked as the config value it stands for: SolovError naming the flag
    unless it is finite and low <= value <= high (None: not given)."""
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise SolovError(f"{flag} must be in [{low}, {high}], got {value}")


def add_runtime_flags(p: argparse.ArgumentParser, precision: str = "parity") -> None:
    """--device_target and --mode (the names of the official MindSpore model-zoo scripts), and --precision with
    the command's default ('parity' for inference and evaluation, 'fast' for training)."""
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--precision", default=precision, choices=["parity", "fast"],
                   help="Ascend operator precision: parity = float32 convolutions and matmuls without HF32 (1e-4 "
                        "agreement with the official model), fast = HF32 allowed (no effect on CPU; default: "
                        f"{precision})")


def add_config_flags(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    """CONFIG [CHECKPOINT] positionally (as the official tools/test_ins.py) or as --config [--checkpoint], and
    --cfg-options; `config_and_checkpoint` resolves the two forms (a flag wins over its positional)."""
    p.add_argument("config_pos", nargs="?", metavar="CONFIG", help="SOLOv2 config file (official SOLO format)")
    if checkpoint:
        p.add_argument("checkpoint_pos", nargs="?", metavar="CHECKPOINT", help="MindSpore .ckpt (weight_convert.py)")
    p.add_argument("--config", default=None, help="the config, as a flag (wins over CONFIG)")
    if checkpoint:
        p.add_argument("--checkpoint", default=None, help="the checkpoint, as a flag (wins over CHECKPOINT)")
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. data.imgs_per_gpu=2 total_epochs=12 test_cfg.score_thr=0.2")


def config_and_checkpoint(p: argparse.ArgumentParser, a: argparse.Namespace, need: Sequence[str] = ("config",)):
    """(config, checkpoint) from the flags, else the positional forms; a usage error for a needed one missing."""
    config = a.config or a.config_pos
    checkpoint = getattr(a, "checkpoint", None) or getattr(a, "checkpoint_pos", None)
    for name, value in (("config", config), ("checkpoint", checkpoint)):
        if name in need and not value:
            p.error(f"the {name} is required: {name.upper()} or --{name}")
    return config, checkpoint


def add_model_flag(p: argparse.ArgumentParser) -> None:
    """--model FILE: an exported network (export.py) instead of CHECKPOINT, and --runtime for an .onnx; see
    `check_model_flags` and `open_predictor`."""
    p.add_argument("--model", default=None, metavar="FILE",
                   help="an exported .mindir or .onnx (export.py; FILE.json beside it) instead of CHECKPOINT. CONFIG is "
                        "then optional; when given, it must describe the same model and its test_cfg and class names "
                        "are used")
    p.add_argument("--runtime", default=None, choices=["onnxruntime", "openvino"],
                   help="what runs an .onnx --model (default onnxruntime; both on the CPU)")


def check_model_flags(a: argparse.Namespace, checkpoint: Optional[str]) -> str:
    """With --model: no CHECKPOINT, no --static-shapes (the exported graph has its own input shape), an ONNX model
    on the CPU only (onnxruntime's CPU provider); --runtime only with an .onnx --model (never silently unused). A
    one-line SolovError (exit 2) otherwise. Returns the runtime of an .onnx model (default onnxruntime)."""
    runtime = a.runtime or "onnxruntime"
    if not a.model:
        if a.runtime:
            raise SolovError(f"--runtime {a.runtime}: only an exported .onnx given with --model runs in it; without "
                             "--model the model runs in MindSpore")
        return runtime
    if checkpoint:
        raise SolovError(f"--model {a.model} replaces CHECKPOINT ({checkpoint}): give one of them")
    if getattr(a, "static_shapes", False):
        raise SolovError("--static-shapes: an exported model has its own input shape (see export.py --input-size)")
    onnx = a.model.lower().endswith(".onnx")
    if onnx and a.device_target != "CPU":
        raise SolovError(f"--device_target {a.device_target}: an ONNX model runs in {runtime} on the CPU; use a "
                         ".mindir")
    if not onnx and a.runtime:
        raise SolovError(f"--runtime {a.runtime}: runs .onnx models; {a.model} runs in MindSpore")
    return runtime


def open_predictor(cfg, checkpoint: Optional[str], model: Optional[str], overrides: Sequence[str] = (),
                   static_shapes: bool = False, runtime: str = "onnxruntime", *, context: RuntimeFlags):
    """The predictor of a command: `ExportedPredictor(model, cfg)` for --model, else `Predictor(cfg, checkpoint)`.
    cfg: the loaded config (None only with --model); overrides: --cfg-options (already in cfg when it is given);
    runtime: what runs an .onnx model; context: the MindSpore context, started here (after the command's cheap
    checks, before the first cell is built) unless the model is an .onnx, which needs no MindSpore."""
    if model or checkpoint:   # found before MindSpore's import (the loaders check again, for their other callers)
        check_file(model or checkpoint, "file" if model else "checkpoint file")
    if not (model and Path(model).suffix.lower() == ".onnx"):   # onnxruntime and OpenVINO run without MindSpore
        context.start()
    if model:
        from solov2.deploy.exported import ExportedPredictor
        return ExportedPredictor(model, cfg=cfg, overrides=() if cfg is not None else overrides, runtime=runtime)
    from solov2.inference import Predictor
    return Predictor(cfg, checkpoint, static_shapes=static_shapes)


def add_static_shapes_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--static-shapes", action="store_true",
                   help="GRAPH mode: compile one graph per padded input size instead of one for all sizes")


def add_force_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true", help=f"overwrite {what} if it exists")


def runtime_flags(a: argparse.Namespace, deterministic: bool = False) -> RuntimeFlags:
    """The MindSpore context of the parsed `add_runtime_flags`; the command starts it right before its model."""
    return RuntimeFlags(device_target=a.device_target, mode=a.mode, precision=a.precision,
                        deterministic=deterministic)
