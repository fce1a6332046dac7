"""Export of SOLOv2 instances: COCO RLE masks, boxes, JSON-ready records, atomic JSON writing."""
import json
import os
import tempfile
from typing import List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_util


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


def _json_default(o):
    """NumPy scalars and arrays (e.g. category ids and AP values from pycocotools) as plain JSON values."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def write_json_atomic(path, obj) -> None:
    """Write `obj` as JSON to `path` so that readers never see a partial file.

    The data goes to a temporary file in the same directory (same file system, so os.replace is atomic),
    which replaces `path` only once it is completely written.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)             # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
