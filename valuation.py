"""COCO mask (segm) and box (bbox) AP of a SOLOv2 checkpoint on a COCO-format split, or of a results file.

    python valuation.py --config configs/solov2/solov2_light_448_r18_fpn_8gpu_3x_trashcan.py \
        --checkpoint work_dirs/latest.ckpt [--out results.json] [--eval segm bbox] [--max-images N]
    python valuation.py --results results.json --ann data/trashcan/annotations/instances_val_trashcan.json
"""
import argparse

from solov2.runtime import cli_main, set_runtime


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="SOLOv2 config file; its data.test (else data.val) split is evaluated")
    p.add_argument("--checkpoint", help="MindSpore .ckpt (not needed with --results)")
    p.add_argument("--ann", help="COCO annotation file to evaluate on (overrides the config's split)")
    p.add_argument("--img-prefix", help="folder of the --ann images")
    p.add_argument("--out", help="write the model's COCO results (JSON list) here")
    p.add_argument("--eval", nargs="+", default=["segm", "bbox"], choices=["segm", "bbox"],
                   help="evaluation types (default: %(default)s); bbox uses the box of each mask")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images of the annotation file")
    p.add_argument("--results", help="score this existing COCO results file instead of running the model")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--static-shapes", action="store_true",
                   help="GRAPH mode: compile one graph per padded input size instead of one for all sizes")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    a = p.parse_args()
    set_runtime(a.device_target, a.mode)
    from solov2.evaluate import run_evaluation
    run_evaluation(a.config, a.checkpoint, a.ann, a.img_prefix, a.out, a.eval, a.max_images, a.force,
                   a.results, a.cfg_options, static_shapes=a.static_shapes)


if __name__ == "__main__":
    cli_main(main)
