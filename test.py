"""One image -> a picture of the SOLOv2 instances (the body: src/solov2/cli/predict.py).

    python test.py configs/solov2/solov2_r101_fpn_8gpu_3x.py SOLOv2_R101_3x.ckpt \
        --dataroot photo.jpg --out photo_result.jpg
    python test.py --config CONFIG --checkpoint CHECKPOINT --dataroot IMAGE --out PICTURE     (the same)
"""
from solov2.cli.predict import test_main

if __name__ == "__main__":
    test_main()
