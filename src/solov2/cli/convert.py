"""`weight_convert.py`: a PyTorch SOLOv2 checkpoint (official WXinlong/SOLO, mmdetection 2.x/3.x or pytorch_solov2
layout) -> a MindSpore .ckpt for `solov2.models.solov2.build_model`.

    python weight_convert.py SRC.pth DST.ckpt [--config CFG] [--force]

Writes DST.ckpt (parameters only) and DST.ckpt.json (class names, inferred architecture, source).
Exit code 0 on success, 2 with a one-line `error: ...` on stderr otherwise.
"""
import argparse
from typing import Optional, Sequence

from solov2.cli.common import add_force_flag, cli_main


def main(argv: Optional[Sequence[str]] = None) -> None:
    def body():
        p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split(": ", 1)[1])
        p.add_argument("src", help="PyTorch checkpoint (.pth)")
        p.add_argument("dst", help="MindSpore checkpoint to write (.ckpt)")
        p.add_argument("--config", help="SOLOv2 config file to check the checkpoint against "
                                        "(default: infer the architecture from the checkpoint)")
        add_force_flag(p, "DST")
        a = p.parse_args(argv)
        from solov2.convert import convert_checkpoint  # torch is imported only by a conversion
        convert_checkpoint(a.src, a.dst, config=a.config, force=a.force)
    cli_main(body)
