"""Data-parallel SOLOv2 fine-tuning, started by msrun (see msrun_launcher.sh); resumes from the newest snapshot.

    bash msrun_launcher.sh "train_multi.py --config configs/solov2/solov2_r101_fpn_8gpu_3x_trashcan.py \
        --load-from SOLOv2_R101_3x.ckpt --device_target Ascend" 8
"""
import sys

import train

if __name__ == "__main__":
    from solov2.runtime import cli_main
    # The "resume after a crash" use: relaunching the same command continues from the newest snapshot.
    if "--resume" not in sys.argv:
        sys.argv += ["--resume", "auto"]
    cli_main(lambda: train.main(distributed=True, description=__doc__.splitlines()[0]))
