"""COCO evaluation of SOLOv2 results: validated ground truth, validated results, pycocotools scores.

Scoring follows the official SOLO `tools/test_ins.py` + mmdet 1.x `coco_eval`: every image of the annotation
file is evaluated (no filtering), results carry the mask as compressed RLE, and the 'bbox' evaluation uses the
box of each mask (pycocotools `toBbox`), because SOLO predicts no boxes.

Public API:
  load_coco(ann_file) -> COCO                                  validated ground truth, quiet
  evaluate_results(coco_gt, results, iou_types=('segm', 'bbox'), img_ids=None) -> {iou_type: metrics}
  format_metrics(metrics) -> str / summary_line(metrics) -> str   printable report / one-line AP summary
"""
import contextlib
import io
import math
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from solov2.data import coco_file
from solov2.data.coco_file import (compressed_rle_problem, image_entry_problem, is_id, is_number, read_coco_file,
                                   rle_problem, sorted_categories)
from solov2.errors import SolovError, read_json

IOU_TYPES = ("segm", "bbox")


def _quiet():
    """pycocotools prints progress chatter on stdout; keep it out of our report."""
    return contextlib.redirect_stdout(io.StringIO())


def ann_name(coco: COCO) -> str:
    return getattr(coco, "ann_file", "the annotation file")


# ------------------------------------------------------------------------------------------ ground truth
def load_coco(ann_file) -> COCO:
    """Read a COCO instances file into a pycocotools COCO (no stdout chatter).

    Raises SolovError naming the file when it is missing, not JSON, or lacks the images/annotations/categories
    lists (the checks of `solov2.data.coco_file`, shared with training), has two images of one id, or lacks the
    annotation fields COCOeval needs. The path is kept as `coco.ann_file` for later messages.
    """
    ann_file = os.fspath(ann_file)
    data = read_coco_file(ann_file)
    seen = {}
    for i, img in enumerate(data["images"]):
        problem = image_entry_problem(i, img)
        if problem is None and not is_id(img["id"]):
            problem = f"image entry #{i} has no integer 'id'"
        if problem is None and img["id"] in seen:   # pycocotools keeps one; its results would be counted twice
            problem = f"image entries #{seen[img['id']]} and #{i} have the same id {img['id']}"
        if problem:
            raise SolovError(f"{ann_file}: {problem}")
        seen[img["id"]] = i
    sorted_categories(ann_file, data["categories"])
    for i, ann in enumerate(data["annotations"]):
        # pycocotools reads these fields without checking; a missing one would be a KeyError deep inside it, after
        # the model has run
        if not (isinstance(ann, dict) and all(k in ann for k in ANN_FIELDS)):
            raise SolovError(f"{ann_file}: annotation #{i} lacks one of {'/'.join(ANN_FIELDS)}")
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    coco.ann_file = ann_file
    return coco


ANN_FIELDS = ("id", "image_id", "category_id", "area", "bbox", "iscrowd")


def _segmentation_problem(seg, img: Optional[dict]) -> Optional[str]:
    """Why pycocotools cannot rasterise `seg` for the segm evaluation, or None. It can: non-empty polygons of >= 3
    points (or one part of 4 numbers, which it reads as a box), or an RLE of the image's size whose runs add up
    (`coco_file.rle_problem`; its C code trusts them). img: the annotation's image entry (None: an annotation of
    no image, which COCOeval never reads)."""
    if isinstance(seg, dict):
        return None if img is None else rle_problem(seg, img["height"], img["width"])
    if not (isinstance(seg, list) and seg and all(isinstance(p, list) and all(is_number(v) for v in p) for p in seg)):
        return "'segmentation' is neither polygons (lists of at least 6 numbers) nor an RLE {size, counts}"
    if not (all(len(p) >= 6 for p in seg) or (len(seg) == 1 and len(seg[0]) == 4)):
        return "a polygon of 'segmentation' has fewer than 3 points (6 numbers)"
    return None


def check_ground_truth(coco: COCO, iou_types: Sequence[str]) -> None:
    """Before any model runs: the ground truth has what each evaluation reads ('segm': on every annotation a
    segmentation pycocotools can rasterise; box-only files with empty ones still score 'bbox'). SolovError naming
    the file and the first annotation that has none."""
    if "segm" not in iou_types:
        return
    for a in coco.dataset["annotations"]:
        if "segmentation" not in a:
            raise SolovError(f"{ann_name(coco)}: annotation id {a['id']} has no 'segmentation' (the segm "
                             "evaluation needs one on every annotation; --eval bbox scores boxes only)")
        problem = _segmentation_problem(a["segmentation"], coco.imgs.get(a["image_id"]))
        if problem:
            raise SolovError(f"{ann_name(coco)}: annotation id {a['id']}: {problem}, which the segm evaluation "
                             "cannot read (--eval bbox scores boxes only)")


def categories(coco: COCO):
    """-> (cat_ids ascending, names): model channel c is category cat_ids[c] (the rule of `data.coco_file`)."""
    return sorted_categories(ann_name(coco), coco.dataset["categories"])


def check_class_count(num_classes: int, coco: COCO, source: str = "the config") -> None:
    """SolovError unless the model's class count equals the annotation file's category count."""
    coco_file.check_class_count(ann_name(coco), len(coco.getCatIds()), num_classes, source)


def first_image_ids(coco: COCO, max_images: Optional[int] = None) -> List[int]:
    """Image ids in annotation-file order, the first `max_images` of them (all when None)."""
    ids = [img["id"] for img in coco.dataset["images"]]
    return ids if max_images is None else ids[:max_images]


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
        if not is_id(r.get("image_id")) or r["image_id"] not in coco.imgs:
            raise SolovError(f"{where}: image_id {r.get('image_id')!r} is not an image of {ann_name(coco)}")
        if not is_id(r.get("category_id")) or r["category_id"] not in cats:
            raise SolovError(f"{where}: category_id {r.get('category_id')!r} is not a category of "
                             f"{ann_name(coco)} (ids {min(cats, default='-')}..{max(cats, default='-')})")
        if not is_number(r.get("score")):
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
            problem = compressed_rle_problem(seg["counts"], info["height"], info["width"])
            if problem:
                raise SolovError(f"{where}: {problem}")
        elif "segm" in iou_types:
            raise SolovError(f"{where}: no 'segmentation' (needed for the segm evaluation)")
        if bbox is not None and not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                                     and all(is_number(v) for v in bbox)):
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
    check_ground_truth(coco, iou_types)
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
