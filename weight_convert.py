"""Convert a PyTorch SOLOv2 checkpoint (official WXinlong/SOLO, mmdetection 2.x/3.x or pytorch_solov2 layout)
into a MindSpore .ckpt for `solov2.models.build_model`.

    python weight_convert.py SRC.pth DST.ckpt [--config CFG] [--force]

Writes DST.ckpt (parameters only) and DST.ckpt.json (class names, inferred architecture, source).
Exit code 0 on success, 2 with a one-line `error: ...` on stderr otherwise.
"""
import argparse
import sys

from solov2.convert import convert_checkpoint
from solov2.errors import SolovError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="PyTorch checkpoint (.pth)")
    parser.add_argument("dst", help="MindSpore checkpoint to write (.ckpt)")
    parser.add_argument("--config", help="SOLOv2 config file to check the checkpoint against "
                                         "(default: infer the architecture from the checkpoint)")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    args = parser.parse_args(argv)
    try:
        convert_checkpoint(args.src, args.dst, config=args.config, force=args.force)
    except (SolovError, OSError) as exc:  # ConvertError, ConfigError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
