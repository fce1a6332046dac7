"""`export.py`: a SOLOv2 checkpoint -> a MindIR or ONNX network, plus its sidecar JSON.

    python export.py CONFIG CHECKPOINT [--format MINDIR|ONNX] [--input-size H W] [--out FILE] [--force]
    python export.py --config CONFIG --checkpoint CHECKPOINT --format MINDIR ...        (the same, as flags)

Run the result with `run.py --model FILE INPUT --out OUTDIR`, `test.py --model FILE --dataroot IMAGE` or
`valuation.py CONFIG --model FILE`. Exit code 0 on success, 2 with a one-line `error: ...` otherwise.
"""
import argparse
from typing import Optional, Sequence

from solov2.cli.common import (add_config_flags, add_force_flag, add_runtime_flags, cli_main, config_and_checkpoint,
                               runtime_flags)


def main(argv: Optional[Sequence[str]] = None) -> None:
    def body():
        p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split(": ", 1)[1])
        add_config_flags(p)
        p.add_argument("--format", default="MINDIR", type=str.upper, choices=["MINDIR", "ONNX"],
                       help="MINDIR (MindSpore / MindSpore Lite; default) or ONNX (onnxruntime and others)")
        p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                       help="a static input size, multiples of size_divisor. Default: MINDIR without deformable "
                            "convolutions has unknown N, H, W (one file for every size); otherwise the config's test "
                            "scale, padded (1333x800 -> 800 1344)")
        p.add_argument("--out", help="model file to write (default: <checkpoint name>_<HxW|dynamic>.mindir|.onnx)")
        p.add_argument("--no-check", action="store_true",
                       help="skip running the exported file once against the native network")
        add_runtime_flags(p)
        add_force_flag(p, "--out and its .json sidecar")
        a = p.parse_intermixed_args(argv)
        config, checkpoint = config_and_checkpoint(p, a, need=("config", "checkpoint"))
        from solov2.deploy.export import export_model
        export_model(config, checkpoint, fmt=a.format, input_size=a.input_size, out=a.out, force=a.force,
                     overrides=a.cfg_options, check=not a.no_check,
                     start_context=runtime_flags(a).start)
    cli_main(body)
