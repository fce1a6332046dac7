"""A folder of images, one image or a video -> pictures + COCO-style results.json.

    python run.py CONFIG CHECKPOINT INPUT --out OUTDIR
"""
import argparse

from solov2.runtime import cli_main, set_runtime


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="SOLOv2 config file (official SOLO format)")
    p.add_argument("checkpoint", help="MindSpore .ckpt (see weight_convert.py)")
    p.add_argument("input", help="folder of images, an image, or a video file")
    p.add_argument("--out", required=True, help="output folder (pictures + results.json)")
    p.add_argument("--score_thr", type=float, default=0.3, help="draw instances with at least this score")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--static-shapes", action="store_true",
                   help="GRAPH mode: compile one graph per padded input size instead of one for all sizes")
    p.add_argument("--force", action="store_true", help="overwrite OUTDIR/results.json and pictures")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    a = p.parse_args()
    set_runtime(a.device_target, a.mode)
    from solov2.predict import predict_many
    predict_many(a.config, a.checkpoint, a.input, a.out, a.score_thr, a.force, a.skip_bad,
                 a.cfg_options, static_shapes=a.static_shapes)


if __name__ == "__main__":
    cli_main(main)
