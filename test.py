"""One image -> a picture of the SOLOv2 instances.

    python test.py --config configs/solov2/solov2_r101_fpn_8gpu_3x.py --checkpoint SOLOv2_R101_3x.ckpt \
        --dataroot demo/demo.jpg --out demo_result.jpg
"""
import argparse

from solov2.runtime import cli_main, set_runtime


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="SOLOv2 config file (official SOLO format)")
    p.add_argument("--checkpoint", required=True, help="MindSpore .ckpt (see weight_convert.py)")
    p.add_argument("--dataroot", default="demo/demo.jpg", help="input image (default: %(default)s)")
    p.add_argument("--out", default=None, help="output picture (default: <image name>_result.jpg)")
    p.add_argument("--score_thr", type=float, default=0.3, help="draw instances with at least this score")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--static-shapes", action="store_true",
                   help="GRAPH mode: compile one graph per padded input size instead of one for all sizes")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    a = p.parse_args()
    set_runtime(a.device_target, a.mode)
    from solov2.predict import predict_image
    predict_image(a.config, a.checkpoint, a.dataroot, a.out, a.score_thr, a.force,
                  a.cfg_options, static_shapes=a.static_shapes)


if __name__ == "__main__":
    cli_main(main)
