"""Data-parallel SOLOv2 fine-tuning, started by msrun; resumes from the newest snapshot (src/solov2/cli/train.py).

    bash msrun_launcher.sh "train_multi.py --config configs/solov2/solov2_r101_fpn_8gpu_3x_trashcan.py \
        --load-from SOLOv2_R101_3x.ckpt --device_target Ascend" 8
"""
from solov2.cli.train import main

if __name__ == "__main__":
    main(distributed=True)
