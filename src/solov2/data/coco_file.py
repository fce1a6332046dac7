"""The one reader and validator of COCO instance files, shared by training (`data.coco`) and evaluation
(`evaluation.coco_eval`), and the one rule that maps categories to model channels.

Channel rule: class channel c (label c + 1 in the SOLO category grid, 0 = background) is the c-th category id
in ascending order. The official code uses pycocotools `getCatIds()` (file order); the two agree for COCO and
TrashCan, whose category lists are sorted.
"""
import math
from numbers import Real
from typing import List, Optional, Tuple

from solov2.errors import SolovError, read_json


def is_number(v) -> bool:
    """A finite int or float (bool excluded): what COCO boxes, areas and scores must be."""
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def is_id(v) -> bool:
    """An int (bool excluded): what COCO image and category ids must be."""
    return isinstance(v, int) and not isinstance(v, bool)


def read_coco_file(ann_file: str, error=SolovError) -> dict:
    """The parsed file; `error` "<file>: <problem>" unless it is JSON with lists images, annotations, categories."""
    data = read_json(ann_file, "annotation file", error)
    if not isinstance(data, dict):
        raise error(f"{ann_file}: not a COCO annotation file (top level is {type(data).__name__}, not object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise error(f"{ann_file}: not a COCO annotation file (missing list '{key}')")
    return data


def check_class_count(ann_file: str, n_categories: int, num_classes: int, source: str = "the config") -> None:
    """SolovError unless the file's category count equals the model's class count (num_classes excludes the
    background; the official config's num_classes includes it)."""
    if n_categories != num_classes:
        raise SolovError(f"{ann_file}: {n_categories} categories, but the model has {num_classes} classes ({source}: "
                         f"set model.bbox_head.num_classes={n_categories + 1}: classes + background)")


def sorted_categories(ann_file: str, cats: list, error=SolovError) -> Tuple[List[int], List[str]]:
    """-> (category ids ascending, their names): channel c is category ids[c]. Ids must be distinct integers."""
    by_id = {}
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not is_id(c.get("id")):
            raise error(f"{ann_file}: category #{i} has no integer 'id'")
        if c["id"] in by_id:
            raise error(f"{ann_file}: duplicate category id {c['id']}")
        by_id[c["id"]] = str(c.get("name", c["id"]))
    ids = sorted(by_id)
    return ids, [by_id[k] for k in ids]


def image_entry_problem(i: int, info) -> Optional[str]:
    """Why images[i] is unusable (no id, no file_name, no positive integer width/height), or None. (COCOeval also
    needs integer ids: `evaluation.coco_eval.load_coco` checks that on top.)"""
    if not isinstance(info, dict):
        return f"image entry #{i} is not an object"
    for key in ("id", "file_name"):
        if key not in info:
            return f"image entry #{i} has no '{key}'"
    for key in ("width", "height"):
        if not is_id(info.get(key)) or info[key] <= 0:
            return f"image {info['file_name']!r} (id {info['id']}) has no positive integer '{key}'"
    return None
