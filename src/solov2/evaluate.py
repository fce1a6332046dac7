"""COCO evaluation of SOLOv2: run the model over a split, collect COCO results, score them with pycocotools.

Scoring follows the official SOLO `tools/test_ins.py` + mmdet 1.x `coco_eval`: every image of the annotation
file is evaluated (no filtering), results carry the mask as compressed RLE, and the 'bbox' evaluation uses the
box of each mask (pycocotools `toBbox`), because SOLO predicts no boxes.

Public API:
  load_coco(ann_file) -> COCO                                  validated ground truth, quiet
  predict_dataset(predictor, ann_file, img_prefix, max_images=None) -> list of COCO result dicts
  evaluate_results(coco_gt, results, iou_types=('segm', 'bbox'), img_ids=None) -> {iou_type: metrics}
  format_metrics(metrics) -> str / summary_line(metrics) -> str   printable report / one-line AP summary
  run_evaluation(...) -> metrics                               what `valuation.py` does
"""
import contextlib
import io
import math
import os
from numbers import Real
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from .config import load_config
from .inference import read_image
from .overlap import overlapped
from .results import instances_to_records, write_json_atomic
from .errors import read_json
from .runtime import SolovError, check_writable

IOU_TYPES = ("segm", "bbox")


def _quiet():
    """pycocotools prints progress chatter on stdout; keep it out of our report."""
    return contextlib.redirect_stdout(io.StringIO())


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ann_name(coco: COCO) -> str:
    return getattr(coco, "ann_file", "the annotation file")


# ------------------------------------------------------------------------------------------ ground truth
def load_coco(ann_file) -> COCO:
    """Read a COCO instances file into a pycocotools COCO (no stdout chatter).

    Raises SolovError naming the file when it is missing, not JSON, or lacks the images/annotations/categories
    lists or the annotation fields COCOeval needs. The path is kept as `coco.ann_file` for later messages.
    """
    ann_file = os.fspath(ann_file)
    data = read_json(ann_file, "annotation file")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise SolovError(f"{ann_file}: not a COCO annotation file (needs lists 'images', 'annotations', "
                         "'categories')")
    for i, img in enumerate(data["images"]):
        if not (isinstance(img, dict) and _is_id(img.get("id")) and "file_name" in img
                and _is_id(img.get("height")) and _is_id(img.get("width"))):
            raise SolovError(f"{ann_file}: image entry #{i} lacks an integer id/height/width or a file_name")
    for i, cat in enumerate(data["categories"]):
        if not (isinstance(cat, dict) and _is_id(cat.get("id"))):
            raise SolovError(f"{ann_file}: category #{i} has no integer 'id'")
    for i, ann in enumerate(data["annotations"]):
        # COCOeval reads these fields without checking; a missing one would be a KeyError deep inside it
        if not (isinstance(ann, dict) and all(k in ann for k in ("image_id", "category_id", "area", "bbox"))):
            raise SolovError(f"{ann_file}: annotation #{i} lacks image_id/category_id/area/bbox")
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    coco.ann_file = ann_file
    return coco


def categories(coco: COCO):
    """-> (cat_ids ascending, names): model channel c is category cat_ids[c] (as CocoDataset and COCOeval)."""
    cat_ids = sorted(coco.getCatIds())
    return cat_ids, [str(coco.cats[c].get("name", c)) for c in cat_ids]


def check_class_count(num_classes: int, coco: COCO, source: str = "the config") -> None:
    """SolovError unless the model's class count equals the annotation file's category count."""
    n_cats = len(coco.getCatIds())
    if n_cats != num_classes:
        raise SolovError(f"{_ann_name(coco)}: {n_cats} categories, but the model has {num_classes} classes "
                         f"({source}: num_classes={num_classes + 1} includes background)")


def first_image_ids(coco: COCO, max_images: Optional[int] = None) -> List[int]:
    """Image ids in annotation-file order, the first `max_images` of them (all when None)."""
    ids = [img["id"] for img in coco.dataset["images"]]
    return ids if max_images is None else ids[:max_images]


# ------------------------------------------------------------------------------------------ prediction
def predict_dataset(predictor, ann_file: Union[str, COCO], img_prefix: str, max_images: Optional[int] = None,
                    progress: bool = True) -> List[dict]:
    """Run `predictor` over every image of the annotation file (file order; the first `max_images` if given).

    Args:
        predictor: a `solov2.inference.Predictor` (its prepare / network / finish stages, overlapped across
            images, and .cfg.head.cate_out_channels).
        ann_file: COCO instances JSON path, or a COCO from `load_coco`.
        img_prefix: folder the images' file_name is relative to.
    Returns:
        COCO results, one dict per instance: image_id, category_id (= sorted category ids[label]), score,
        segmentation (RLE, counts str), bbox [x, y, w, h] of the mask, plus file_name/label/category_name.
    Raises SolovError for a class-count mismatch, a missing/unreadable image, or an image whose size differs
    from the annotated one (its masks could not be compared with the ground truth).
    """
    coco = ann_file if isinstance(ann_file, COCO) else load_coco(ann_file)
    check_class_count(predictor.cfg.head.cate_out_channels, coco, predictor.cfg.source or "the config")
    cat_ids, names = categories(coco)
    ids = first_image_ids(coco, max_images)

    def prepare(img_id):
        info = coco.imgs[img_id]
        path = os.path.join(img_prefix, info["file_name"])
        img = read_image(path)
        if img.shape[:2] != (info["height"], info["width"]):
            raise SolovError(f"{path}: image is {img.shape[0]}x{img.shape[1]} but {_ann_name(coco)} says "
                             f"{info['height']}x{info['width']}")
        return predictor.prepare(img)

    def finish(img_id, prepared, outputs):
        res = predictor.finish(outputs, prepared[1])
        return instances_to_records(coco.imgs[img_id]["file_name"], res["masks"], res["labels"], res["scores"],
                                    names, image_id=img_id, category_ids=cat_ids)

    records: List[dict] = []
    bar = tqdm(total=len(ids), unit="img", desc="evaluate", dynamic_ncols=True, disable=not progress)
    for recs in overlapped(ids, prepare, lambda prepared: predictor.network(prepared[0]), finish):
        records += recs
        bar.update(1)
    bar.close()
    return records


# ------------------------------------------------------------------------------------------ results
def load_results_file(path) -> list:
    """Read a COCO results JSON; SolovError naming the file if missing, not JSON or not a list."""
    path = os.fspath(path)
    results = read_json(path, "results file")
    if not isinstance(results, list):
        kind = "object" if isinstance(results, dict) else type(results).__name__
        raise SolovError(f"{path}: not a COCO results file (top level is a JSON {kind}, expected a list of "
                         "{image_id, category_id, score, segmentation/bbox})")
    return results


def check_results(results, coco: COCO, iou_types: Sequence[str] = IOU_TYPES, source: str = "results") -> None:
    """SolovError (naming `source` and the record) unless `results` is a list of COCO results for `coco`.

    Each record needs an image_id of the file, a category_id of the file, a finite score, and a compressed RLE
    `segmentation` of the image's size (required for 'segm') and/or a `bbox` [x, y, w, h].
    """
    if not isinstance(results, list):
        raise SolovError(f"{source}: not a list of COCO results (got {type(results).__name__})")
    cats = set(coco.getCatIds())
    for i, r in enumerate(results):
        where = f"{source}: result #{i}"
        if not isinstance(r, dict):
            raise SolovError(f"{where} is a {type(r).__name__}, not an object")
        if not _is_id(r.get("image_id")) or r["image_id"] not in coco.imgs:
            raise SolovError(f"{where}: image_id {r.get('image_id')!r} is not an image of {_ann_name(coco)}")
        if not _is_id(r.get("category_id")) or r["category_id"] not in cats:
            raise SolovError(f"{where}: category_id {r.get('category_id')!r} is not a category of "
                             f"{_ann_name(coco)} (ids {min(cats, default='-')}..{max(cats, default='-')})")
        if not _is_number(r.get("score")):
            raise SolovError(f"{where}: 'score' is missing or not a finite number")
        seg, bbox = r.get("segmentation"), r.get("bbox")
        if seg is not None:
            info = coco.imgs[r["image_id"]]
            if not (isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes))
                    and isinstance(seg.get("size"), (list, tuple))):
                raise SolovError(f"{where}: 'segmentation' is not a compressed RLE {{size, counts: str}}")
            if list(seg["size"]) != [info["height"], info["width"]]:
                raise SolovError(f"{where}: mask size {list(seg['size'])} != image size "
                                 f"[{info['height']}, {info['width']}]")
        elif "segm" in iou_types:
            raise SolovError(f"{where}: no 'segmentation' (needed for the segm evaluation)")
        if bbox is not None and not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                                     and all(_is_number(v) for v in bbox)):
            raise SolovError(f"{where}: 'bbox' is not 4 finite numbers [x, y, w, h]")
        if seg is None and bbox is None:
            raise SolovError(f"{where}: neither 'segmentation' nor 'bbox'")


def _results_to_coco(coco_gt: COCO, results: List[dict]) -> COCO:
    """COCO results -> detection COCO, like `coco_gt.loadRes` but without its crash on an empty list.

    Differences from loadRes, on purpose: records are copied (loadRes mutates them), and a record with a mask
    always gets the mask's area (loadRes uses the box area when a bbox is present). The official SOLO results
    carry no bbox, so loadRes gave them mask area and `toBbox(mask)`; this keeps exactly that, while still
    letting a record's own bbox (ours is the mask's box anyway) be the one scored by the 'bbox' evaluation.
    """
    anns = []
    for i, r in enumerate(results):
        a = dict(id=i + 1, image_id=r["image_id"], category_id=r["category_id"], score=float(r["score"]),
                 iscrowd=0)
        seg = r.get("segmentation")
        if seg is not None:
            a["segmentation"] = dict(size=list(seg["size"]), counts=seg["counts"])
            a["area"] = float(mask_util.area(a["segmentation"]))
            bbox = r.get("bbox")
            a["bbox"] = [float(v) for v in (bbox if bbox is not None else mask_util.toBbox(a["segmentation"]))]
        else:
            a["bbox"] = [float(v) for v in r["bbox"]]
            a["area"] = a["bbox"][2] * a["bbox"][3]
        anns.append(a)
    dt = COCO()
    dt.dataset = dict(images=list(coco_gt.dataset["images"]), categories=list(coco_gt.dataset["categories"]),
                      annotations=anns)
    with _quiet():
        dt.createIndex()
    return dt


def per_class_ap(coco_eval: COCOeval) -> List[dict]:
    """Per-category AP and AP50 from an accumulated COCOeval (area 'all', maxDets 100).

    precision has shape (T iou thresholds, R recall thresholds, K categories, A areas, M maxDets) with -1 where
    undefined; AP of a category = mean of its valid (> -1) entries, NaN when there are none (no GT in the
    evaluated images). Returns [dict(category_id, AP, AP50)] in `params.catIds` (ascending id) order.
    """
    p = coco_eval.params
    prec = coco_eval.eval["precision"][:, :, :, p.areaRngLbl.index("all"), p.maxDets.index(100)]
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    out = []
    for k, cat_id in enumerate(p.catIds):
        ap, ap50 = prec[:, :, k], prec[t50, :, k]
        out.append(dict(category_id=cat_id,
                        AP=float(ap[ap > -1].mean()) if (ap > -1).any() else float("nan"),
                        AP50=float(ap50[ap50 > -1].mean()) if (ap50 > -1).any() else float("nan")))
    return out


def evaluate_results(coco_gt: Union[COCO, str], results: List[dict], iou_types: Sequence[str] = IOU_TYPES,
                     img_ids: Optional[Sequence[int]] = None) -> Dict[str, dict]:
    """Score COCO results with pycocotools COCOeval.

    Args:
        coco_gt: ground truth (COCO from `load_coco`, or the annotation file path).
        results: COCO result dicts (see `check_results`); may be empty (then AP is 0 where GT exists).
        iou_types: subset of ('segm', 'bbox'); 'bbox' scores each record's bbox, else the box of its mask.
        img_ids: evaluate only these images (default: every image of the annotation file, as official).
    Returns:
        {iou_type: dict(stats=[12 floats, pycocotools order, -1 = undefined], AP, AP50, AP75,
        per_class=[dict(category_id, name, AP, AP50)], summary=str (the 12 printed lines))}.
    """
    coco = coco_gt if isinstance(coco_gt, COCO) else load_coco(coco_gt)
    bad = [t for t in iou_types if t not in IOU_TYPES]
    if bad or not iou_types:
        raise SolovError(f"unknown evaluation type(s) {bad or list(iou_types)}; choose from {', '.join(IOU_TYPES)}")
    check_results(results, coco, iou_types)
    dt = _results_to_coco(coco, results)
    names = dict(zip(*categories(coco)))
    metrics = {}
    for iou_type in iou_types:
        ev = COCOeval(coco, dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        with _quiet():
            ev.evaluate()
            ev.accumulate()
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ev.summarize()
        stats = [float(s) for s in ev.stats]
        classes = [dict(c, name=names[c["category_id"]]) for c in per_class_ap(ev)]
        metrics[iou_type] = dict(stats=stats, AP=stats[0], AP50=stats[1], AP75=stats[2], per_class=classes,
                                 summary=buf.getvalue().rstrip("\n"))
    return metrics


def format_metrics(metrics: Dict[str, dict]) -> str:
    """The 12-line COCO summary and a per-class table (name, AP, AP50) for every evaluated type."""
    lines = []
    for iou_type, m in metrics.items():
        lines += [f"== {iou_type} ==", m["summary"], f"per-class {iou_type} AP (IoU=0.50:0.95, area=all, "
                  "maxDets=100; '-' = no ground truth):", f"  {'class':<28} {'AP':>6} {'AP50':>6}"]
        fmt = lambda v: "     -" if math.isnan(v) else f"{v:6.3f}"  # noqa: E731
        lines += [f"  {c['name']:<28} {fmt(c['AP'])} {fmt(c['AP50'])}" for c in m["per_class"]]
    return "\n".join(lines)


def summary_line(metrics: Dict[str, dict]) -> str:
    """e.g. 'segm AP 0.123 AP50 0.234 | bbox AP 0.100 AP50 0.200'."""
    return " | ".join(f"{t} AP {m['AP']:.3f} AP50 {m['AP50']:.3f}" for t, m in metrics.items())


# ------------------------------------------------------------------------------------------ CLI body
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


def run_evaluation(config: Optional[str] = None, checkpoint: Optional[str] = None, ann: Optional[str] = None,
                   img_prefix: Optional[str] = None, out: Optional[str] = None,
                   iou_types: Sequence[str] = IOU_TYPES, max_images: Optional[int] = None, force: bool = False,
                   results_file: Optional[str] = None, overrides=(), static_shapes: bool = False) -> Dict[str, dict]:
    """`valuation.py`: model (or an existing results file) -> COCO AP printed; returns `evaluate_results`'.

    Without `results_file` the model of `config` + `checkpoint` runs over the split and the results are
    optionally written to `out` (atomically; an existing file only with `force`). With `results_file` that
    file is scored instead (config optional: it only selects the split and is checked against it).
    `max_images` restricts both running and scoring to the first N images of the annotation file.
    """
    if max_images is not None and max_images < 1:
        raise SolovError(f"--max-images must be >= 1, got {max_images}")
    if results_file is None and (not config or not checkpoint):
        raise SolovError("--config and --checkpoint are required unless --results scores an existing file")
    if results_file is not None and out:
        raise SolovError("--out writes the model's results; it cannot be combined with --results")
    if out:  # fail before the (long) model run, not after it
        check_writable(os.path.abspath(out), force)
    cfg = load_config(config, overrides) if config else None
    ann_file, prefix = _split(cfg, ann, img_prefix, need_images=results_file is None)
    results = load_results_file(results_file) if results_file is not None else None
    coco = load_coco(ann_file)
    if cfg is not None:  # cheap check before building the model
        check_class_count(cfg.head.cate_out_channels, coco, cfg.source or config)
    img_ids = first_image_ids(coco, max_images)
    if results is None:
        from .inference import Predictor  # builds the network: only on this path
        predictor = Predictor(cfg, checkpoint, static_shapes=static_shapes)
        results = predict_dataset(predictor, coco, prefix, max_images)
        if predictor.compiled_graphs:
            print(f"GRAPH mode: {predictor.compiled_graphs} network graph(s) compiled")
        if out:
            write_json_atomic(out, results)
            print(f"{len(results)} results -> {out}")
    else:
        check_results(results, coco, iou_types, source=results_file)
    print(f"evaluating {len(results)} results on {len(img_ids)} image(s) of {ann_file}")
    metrics = evaluate_results(coco, results, iou_types, img_ids)
    print(format_metrics(metrics))
    print(summary_line(metrics))
    return metrics
