"""Convert a PyTorch SOLOv2 checkpoint (official WXinlong/SOLO, mmdetection 2.x/3.x or pytorch_solov2 layout)
into a MindSpore .ckpt (the body: src/solov2/cli/convert.py).

    python weight_convert.py SRC.pth DST.ckpt [--config CFG] [--force]
"""
from solov2.cli.convert import main

if __name__ == "__main__":
    main()
