"""`train.py` (one device) and `train_multi.py` (data parallel under msrun): flags -> a loaded config -> train.

    python train.py CONFIG [--load-from SOLOv2_LIGHT_448_R18_3x.ckpt] [--work-dir work_dirs/trashcan_r18]
    bash msrun_launcher.sh "train_multi.py --config CONFIG --load-from SOLOv2_R101_3x.ckpt --device_target Ascend" 8
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from solov2.cli.common import (add_config_flags, add_runtime_flags, check_flag_range, cli_main, config_and_checkpoint,
                               runtime_flags)
from solov2.config import load_config
from solov2.errors import SolovError

DESCRIPTIONS = {False: "Fine-tune SOLOv2 on a COCO-format dataset on one device.",
                True: "Data-parallel SOLOv2 fine-tuning, started by msrun (see msrun_launcher.sh); resumes from the "
                      "newest snapshot."}


def parser(distributed: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTIONS[distributed])
    add_config_flags(p, checkpoint=False)
    p.add_argument("--work-dir", default=None, help="snapshots and logs (default: config work_dir or work_dirs/<config>)")
    # The "resume after a crash" use of train_multi.py: relaunching the same command continues the run.
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue from the newest (auto) or a given snapshot" + (
                       " (default: auto; with --force a new run)" if distributed else ""))
    p.add_argument("--load-from", default=None, help="initial weights (.ckpt), e.g. a converted COCO checkpoint")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, logged)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (bitwise-reproducible runs)")
    p.add_argument("--keep-last", type=int, default=3, help="keep the newest K snapshots (0: all; the best "
                                                             "checkpoint is never deleted)")
    p.add_argument("--force", action="store_true", help="start a new run in a work dir an earlier run left "
                                                         "checkpoints in (they and its logs are deleted)")
    p.add_argument("--no-validate", action="store_true", help="skip the config's evaluation (validation on "
                                                             "data.val while training) for this run")
    p.add_argument("--amp", default=None, choices=["O0", "O1", "O2", "O3"],
                   help="mixed precision (config amp_level; default O0, or O2 with an mmdetection fp16 section): "
                        "O2 = float16 except the norm layers, with dynamic loss scaling (README)")
    add_runtime_flags(p, precision="fast")
    return p


def work_dir_of(cfg, config_path: str, work_dir: Optional[str]) -> Path:
    """--work-dir, else the config's work_dir, else work_dirs/<config file stem>."""
    return Path(work_dir or cfg.work_dir or Path("work_dirs") / Path(config_path).stem)


def main(argv: Optional[Sequence[str]] = None, distributed: bool = False) -> None:
    def body():
        p = parser(distributed)
        a = p.parse_intermixed_args(argv)
        config, _ = config_and_checkpoint(p, a)
        check_flag_range("--keep-last", a.keep_last, 0, 2 ** 31 - 1)
        check_flag_range("--seed", a.seed, 0, 2 ** 31 - 1)
        # --amp is the config's amp_level, so run.json records it and a resume compares it
        cfg = load_config(config, a.cfg_options + ([f"amp_level={a.amp}"] if a.amp else []))
        if cfg.resume_from:   # mmdetection's way; here one flag decides, so a relaunch never re-resumes a fixed file
            raise SolovError(f"{config}: resume_from={cfg.resume_from!r} is not read by this port: resume with "
                             "--resume PATH (or --resume auto, the newest snapshot of the work dir)")
        resume = a.resume if a.resume is not None else ("auto" if distributed and not a.force else None)
        runtime_flags(a, deterministic=a.deterministic).start()   # a bad config was reported without MindSpore
        from solov2.engine.train import train   # imports MindSpore: after the context's CPU cap
        train(cfg, work_dir_of(cfg, config, a.work_dir), resume=resume, load_from=a.load_from, seed=a.seed,
              mode=a.mode, distributed=distributed, keep_last=a.keep_last, validate=not a.no_validate,
              force=a.force)
    cli_main(body)
