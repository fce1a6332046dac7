"""Fine-tune SOLOv2 on a COCO-format dataset on one device (the body: src/solov2/cli/train.py).

    python train.py configs/solov2/solov2_light_448_r18_fpn_8gpu_3x_trashcan.py \
        --load-from SOLOv2_LIGHT_448_R18_3x.ckpt --work-dir work_dirs/trashcan_r18
"""
from solov2.cli.train import main

if __name__ == "__main__":
    main()
