"""Export a SOLOv2 checkpoint to MindIR (dynamic sizes where possible) or ONNX, with a sidecar JSON (the body:
src/solov2/cli/export.py and src/solov2/deploy/export.py).

    python export.py CONFIG CHECKPOINT [--format MINDIR|ONNX] [--input-size H W] [--out FILE] [--force]
"""
from solov2.cli.export import main

if __name__ == "__main__":
    main()
