"""Fine-tune SOLOv2 on a COCO-format dataset on one device.

    python train.py --config configs/solov2/solov2_light_448_r18_fpn_8gpu_3x_trashcan.py \
        --load-from SOLOv2_LIGHT_448_R18_3x.ckpt --work-dir work_dirs/trashcan_r18
"""
import argparse


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="SOLOv2 config file (official SOLO format)")
    p.add_argument("--work-dir", default=None, help="snapshots and logs (default: config work_dir or work_dirs/<config>)")
    p.add_argument("--resume", default=None, metavar="auto|PATH", help="continue from the newest (auto) or a given snapshot")
    p.add_argument("--load-from", default=None, help="initial weights (.ckpt), e.g. a converted COCO checkpoint")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, logged)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (bitwise-reproducible runs)")
    p.add_argument("--keep-last", type=int, default=3, help="keep the newest K snapshots (0: all)")
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. data.imgs_per_gpu=2 total_epochs=12 data.train.max_images=100")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    return p


def main(distributed: bool = False, description: str = __doc__.splitlines()[0]):
    from solov2.runtime import set_runtime
    a = parser(description).parse_args()
    set_runtime(a.device_target, a.mode)
    from solov2.train import train
    train(a.config, a.work_dir, a.resume, a.load_from, a.seed, a.deterministic, a.cfg_options, a.mode,
          distributed, a.keep_last)


if __name__ == "__main__":
    from solov2.runtime import cli_main
    cli_main(main)
