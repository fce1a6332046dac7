"""SOLOv2 instances as COCO results: RLE masks, boxes, JSON-ready records, and a model run over a whole split."""
import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from tqdm import tqdm

from solov2.data.images import read_image
from solov2.errors import SolovError
from solov2.evaluation.coco_eval import (IOU_TYPES, ann_name, categories, check_class_count, evaluate_results,
                                         first_image_ids, load_coco)
from solov2.overlap import overlapped


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO RLE of one binary mask.

    Args:
        mask: bool or {0,1} (H, W).
    Returns:
        dict(size=[H, W], counts=str); `counts` is decoded to str so that the record is JSON serialisable
        (pycocotools.mask.decode/toBbox/area accept it back).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    # pycocotools reads column-major uint8 (the official tools/test_ins.py does the same).
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(rle["size"][0]), int(rle["size"][1])], counts=rle["counts"].decode("ascii"))


def mask_to_bbox(mask: np.ndarray) -> List[float]:
    """Tight box [x, y, w, h] (floats) of the mask pixels, pycocotools convention (w = x2 - x1 + 1).

    An empty mask gives [0, 0, 0, 0].
    """
    return rle_to_bbox(mask_to_rle(mask))


def rle_to_bbox(rle: dict) -> List[float]:
    """[x, y, w, h] of an RLE from `mask_to_rle` (pycocotools.mask.toBbox)."""
    return [float(v) for v in mask_util.toBbox(rle)]


def instances_to_records(file_name: str, masks: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                         class_names: Sequence[str], image_id: Optional[int] = None,
                         category_ids: Optional[Sequence[int]] = None) -> List[dict]:
    """One JSON-serialisable dict per instance.

    Args:
        file_name: image file name stored in every record.
        masks: bool (n, H, W); labels: int (n,) 0-based class channel; scores: float (n,).
        class_names: name of every class channel.
        image_id: COCO image id; added to each record when given.
        category_ids: COCO category id of every class channel (the dataset's `cat_ids`); when given, each
            record gets `category_id = category_ids[label]` (the COCO results format).
    Returns:
        list of dict(file_name, label, category_name, score, bbox=[x, y, w, h], segmentation=RLE
        [, image_id][, category_id]), in the input order.
    """
    if not (len(masks) == len(labels) == len(scores)):
        raise ValueError(f"masks/labels/scores lengths differ: {len(masks)}, {len(labels)}, {len(scores)}")
    records = []
    for mask, label, score in zip(masks, labels, scores):
        label = int(label)
        rle = mask_to_rle(mask)
        rec = dict(file_name=file_name, label=label, category_name=str(class_names[label]),
                   score=float(score), bbox=rle_to_bbox(rle), segmentation=rle)
        if image_id is not None:
            rec["image_id"] = int(image_id)
        if category_ids is not None:
            rec["category_id"] = int(category_ids[label])
        records.append(rec)
    return records


def predict_dataset(predictor, ann_file: Union[str, COCO], img_prefix: str, max_images: Optional[int] = None,
                    progress: bool = True, shard: Tuple[int, int] = (0, 1)) -> List[dict]:
    """Run `predictor` over every image of the annotation file (file order; the first `max_images` if given;
    with shard=(rank, world) over images rank, rank + world, ... of those).

    Args:
        predictor: a `solov2.inference.Predictor` or `solov2.deploy.exported.ExportedPredictor` (its prepare /
            network / finish stages, overlapped across images, its class_names and source).
        ann_file: COCO instances JSON path, or a COCO from `load_coco`.
        img_prefix: folder the images' file_name is relative to.
    Returns:
        COCO results, one dict per instance: image_id, category_id (= sorted category ids[label]), score,
        segmentation (RLE, counts str), bbox [x, y, w, h] of the mask, plus file_name/label/category_name.
    Raises SolovError for a class-count mismatch, an annotated size the predictor cannot take (`check_size`:
    too thin, larger than a static export; before any image runs), a missing/unreadable image, or an image whose
    size differs from the annotated one (its masks could not be compared with the ground truth).
    """
    coco = ann_file if isinstance(ann_file, COCO) else load_coco(ann_file)
    check_class_count(len(predictor.class_names), coco, predictor.source)
    cat_ids, names = categories(coco)
    ids = first_image_ids(coco, max_images)[shard[0]::shard[1]]
    for img_id in ids:   # an image the model cannot take, found from the annotated sizes now, not at image 900
        info = coco.imgs[img_id]
        try:
            predictor.check_size(info["height"], info["width"])
        except SolovError as e:
            raise SolovError(f"{os.path.join(img_prefix, info['file_name'])}: {e} (its size in "
                             f"{ann_name(coco)})") from None

    def prepare(img_id):
        info = coco.imgs[img_id]
        path = os.path.join(img_prefix, info["file_name"])
        img = read_image(path)
        if img.shape[:2] != (info["height"], info["width"]):
            raise SolovError(f"{path}: image is {img.shape[0]}x{img.shape[1]} but {ann_name(coco)} says "
                             f"{info['height']}x{info['width']}")
        try:
            return predictor.prepare(img)
        except SolovError as e:   # too thin for the test scale, larger than a static export: name the image
            raise SolovError(f"{path}: {e}") from None

    def finish(img_id, prepared, outputs):
        res = predictor.finish(outputs, prepared[1])
        return instances_to_records(coco.imgs[img_id]["file_name"], res["masks"], res["labels"], res["scores"],
                                    names, image_id=img_id, category_ids=cat_ids)

    records: List[dict] = []
    # closed on any exit, so that an error starts on a line of its own
    with tqdm(total=len(ids), unit="img", desc="evaluate", dynamic_ncols=True, disable=not progress) as bar:
        for recs in overlapped(ids, prepare, lambda prepared: predictor.network(prepared[0]), finish):
            records += recs
            bar.update(1)
    return records


def predict_and_evaluate(predictor, coco: COCO, img_prefix: str, iou_types: Sequence[str] = IOU_TYPES,
                         max_images: Optional[int] = None, progress: bool = True, shard: Tuple[int, int] = (0, 1),
                         gather: Optional[Callable] = None):
    """The model path of valuation.py, which validation while training runs too: `predict_dataset` over the
    first `max_images` images (all when None), then `evaluate_results` on exactly those images.

    Sharded (validation on several devices): this process predicts its `shard` (rank, world) of the images, and
    `gather(records, failure)`, called once on every rank with its records or the exception that stopped them,
    returns every rank's records in rank order on rank 0 (None on the others, which return (None, None)). Rank 0
    evaluates them in file order: the results and metrics of one process.

    Returns (results: COCO result dicts, metrics: {iou_type: dict(stats, AP, AP50, AP75, per_class, summary)}).
    """
    ids = first_image_ids(coco, max_images)
    if gather is None:
        results = predict_dataset(predictor, coco, img_prefix, max_images, progress)
    else:
        try:
            mine, failure = predict_dataset(predictor, coco, img_prefix, max_images, progress, shard), None
        except Exception as e:   # the other ranks must hear of it, or they would wait for this shard forever
            mine, failure = [], e
        shards = gather(mine, failure)
        if shards is None:
            return None, None
        results = in_file_order(shards, ids)
    return results, evaluate_results(coco, results, iou_types, ids)


def in_file_order(shards: Sequence[List[dict]], ids: Sequence[int]) -> List[dict]:
    """The records of every shard, image by image in the order of `ids`, each image's in its predictor's order
    (the order of one process: pycocotools breaks score ties by it)."""
    by_image = {}
    for records in shards:
        for r in records:
            by_image.setdefault(r["image_id"], []).append(r)
    return [r for i in ids for r in by_image.get(i, [])]
