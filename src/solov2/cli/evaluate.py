"""`valuation.py`: COCO mask (segm) and box (bbox) AP of a checkpoint on a split, or of an existing results file.

    python valuation.py CONFIG CHECKPOINT [--out results.json] [--eval segm bbox] [--max-images N]
    python valuation.py --config CONFIG --checkpoint CHECKPOINT ...        (the same, as flags)
    python valuation.py CONFIG --model solov2.onnx ...                     (an exported network, export.py)
    python valuation.py --results results.json --ann data/trashcan/annotations/instances_val_trashcan.json
"""
import argparse
from typing import Dict, Optional, Sequence

from solov2.cli.common import (add_config_flags, add_force_flag, add_model_flag, add_runtime_flags,
                               add_static_shapes_flag, check_model_flags, cli_main, config_and_checkpoint,
                               open_predictor, runtime_flags)
from solov2.config import load_config
from solov2.engine.runtime import RuntimeFlags
from solov2.errors import SolovError
from solov2.evaluation.coco_eval import (IOU_TYPES, check_class_count, check_ground_truth, check_results,
                                         evaluate_results, first_image_ids, format_metrics, load_coco,
                                         load_results_file, summary_line)
from solov2.files import check_not_an_input, check_writable, write_json_atomic


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[1])
    add_config_flags(p)
    p.add_argument("--ann", help="COCO annotation file to evaluate on (overrides the config's split)")
    p.add_argument("--img-prefix", help="folder of the --ann images")
    p.add_argument("--out", help="write the model's COCO results (JSON list) here")
    p.add_argument("--eval", nargs="+", default=list(IOU_TYPES), choices=list(IOU_TYPES),
                   help="evaluation types (default: %(default)s); bbox uses the box of each mask")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images of the annotation file")
    p.add_argument("--results", help="score this existing COCO results file instead of running the model (no "
                                      "model runs: --device_target, --mode and --precision do not apply)")
    add_runtime_flags(p)
    add_static_shapes_flag(p)
    add_model_flag(p)
    add_force_flag(p, "--out")
    return p


def _split(cfg, ann: Optional[str], img_prefix: Optional[str], need_images: bool):
    """(ann_file, img_prefix): explicit options, else the config's test split, else its val split."""
    if ann:
        if need_images and not img_prefix:
            raise SolovError("--ann needs --img-prefix (the folder of its images) when running the model")
        return ann, img_prefix
    if cfg is None:
        raise SolovError("give --config (its test/val split is evaluated) or --ann")
    d = cfg.data
    for split_ann, split_prefix in ((d.test_ann_file, d.test_img_prefix), (d.val_ann_file, d.val_img_prefix)):
        if split_ann:
            return split_ann, img_prefix or split_prefix
    raise SolovError(f"{cfg.source}: no data.test or data.val ann_file; pass --ann and --img-prefix")


def run_evaluation(config: Optional[str] = None, checkpoint: Optional[str] = None, *, model: Optional[str] = None,
                   runtime: str = "onnxruntime", ann: Optional[str] = None, img_prefix: Optional[str] = None,
                   out: Optional[str] = None, iou_types: Sequence[str] = IOU_TYPES, max_images: Optional[int] = None,
                   force: bool = False,
                   results_file: Optional[str] = None, overrides=(), static_shapes: bool = False,
                   context: RuntimeFlags) -> Dict[str, dict]:
    """`valuation.py`: model (or an existing results file) -> COCO AP printed; returns `evaluate_results`'.

    Without `results_file` the model of `config` + `checkpoint` (or the exported `model`, config optional, run by
    `runtime` when it is an .onnx) runs over
    the split and the results are optionally written to `out` (atomically; an existing file only with `force`).
    With `results_file` that file is scored instead (config optional: it only selects the split and is checked
    against it).
    `max_images` restricts both running and scoring to the first N images of the annotation file.
    context: the MindSpore context, started only to run a model (scoring a results file needs no MindSpore).
    """
    if max_images is not None and max_images < 1:
        raise SolovError(f"--max-images must be >= 1, got {max_images}")
    if results_file is None and not model and (not config or not checkpoint):
        raise SolovError("CONFIG and CHECKPOINT (or --config and --checkpoint, or --model) are required unless "
                         "--results scores an existing file")
    if results_file is not None and model:
        raise SolovError("--results scores an existing file; it cannot be combined with --model")
    if results_file is not None and out:
        raise SolovError("--out writes the model's results; it cannot be combined with --results")
    inputs = {"--ann": ann, "--results": results_file, "CONFIG": config, "CHECKPOINT": checkpoint, "--model": model,
              "--model sidecar": f"{model}.json" if model else None}
    if out:  # fail before the (long) model run, not after it
        check_not_an_input([out], inputs)
        check_writable(out, force)
    cfg = load_config(config, overrides) if config else None
    ann_file, prefix = _split(cfg, ann, img_prefix, need_images=results_file is None)
    if out:
        check_not_an_input([out], {"annotation file": ann_file})
    results = load_results_file(results_file) if results_file is not None else None
    coco = load_coco(ann_file)
    check_ground_truth(coco, iou_types)
    if cfg is not None:  # cheap check before building the model
        check_class_count(cfg.head.cate_out_channels, coco, cfg.source or config)
    img_ids = first_image_ids(coco, max_images)
    if results is None:
        from solov2.evaluation.results import predict_and_evaluate  # builds the network: only on this path
        predictor = open_predictor(cfg, checkpoint, model, overrides, static_shapes, runtime, context=context)
        results, metrics = predict_and_evaluate(predictor, coco, prefix, iou_types, max_images)
        if predictor.compiled_graphs:
            print(f"GRAPH mode: {predictor.compiled_graphs} network graph(s) compiled")
        if out:
            write_json_atomic(out, results)
            print(f"{len(results)} results -> {out}")
        print(f"evaluated {len(results)} results on {len(img_ids)} image(s) of {ann_file}")
    else:
        check_results(results, coco, iou_types, source=results_file)
        print(f"evaluating {len(results)} results on {len(img_ids)} image(s) of {ann_file}")
        metrics = evaluate_results(coco, results, iou_types, img_ids)
    print(format_metrics(metrics))
    print(summary_line(metrics))
    return metrics


def main(argv=None) -> None:
    def body():
        p = parser()
        a = p.parse_intermixed_args(argv)   # positionals may stand between flags
        config, checkpoint = config_and_checkpoint(p, a, need=())  # run_evaluation says which it needs
        runtime = check_model_flags(a, checkpoint)
        run_evaluation(config, checkpoint, model=a.model, runtime=runtime, ann=a.ann, img_prefix=a.img_prefix,
                       out=a.out, iou_types=a.eval, max_images=a.max_images, force=a.force, results_file=a.results,
                       overrides=a.cfg_options, static_shapes=a.static_shapes, context=runtime_flags(a))
    cli_main(body)
