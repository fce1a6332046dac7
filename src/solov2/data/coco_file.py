"""The one reader and validator of COCO instance files, shared by training (`data.coco`) and evaluation
(`evaluation.coco_eval`), and the one rule that maps categories to model channels.

Channel rule: class channel c (label c + 1 in the SOLO category grid, 0 = background) is the c-th category id
in ascending order. The official code uses pycocotools `getCatIds()` (file order); the two agree for COCO and
TrashCan, whose category lists are sorted.
"""
import math
from numbers import Real
from typing import List, Optional, Tuple, Union

import numpy as np

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


def rle_problem(seg: dict, h: int, w: int) -> Optional[str]:
    """Why the RLE segmentation `seg` ({size, counts}) is not an h x w mask pycocotools can decode, or None.
    counts: a list of runs (uncompressed, as COCO's crowd annotations) or a compressed string."""
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_id(v) for v in size)):
        return "RLE without a [h, w] 'size'"
    if list(size) != [h, w]:
        return f"RLE size {list(size)} != image size [{h}, {w}]"
    if isinstance(counts, list):
        if not all(is_id(v) and v >= 0 for v in counts) or sum(counts) != h * w:
            return "uncompressed RLE counts are not non-negative ints summing to h*w"
        return None
    if not isinstance(counts, (str, bytes)):
        return "RLE 'counts' is neither a list nor a string"
    return compressed_rle_problem(counts, h, w)


def compressed_rle_runs(counts: Union[str, bytes]) -> np.ndarray:
    """The runs (int64 (m,), column-major, zeros first) of a pycocotools compressed RLE string; ValueError saying
    what is wrong if it is not one.

    The format (pycocotools `rleToString`): each run is a signed number in 5-bit groups, low group first, as
    chr(48 + group), bit 0x20 = "more groups follow", bit 0x10 of the last group = sign; from the 4th run on, the
    number is the difference to the run two before. Decoded with NumPy (tens of microseconds per mask).
    """
    c = np.frombuffer(counts.encode("latin-1") if isinstance(counts, str) else counts, np.uint8).astype(np.int64) - 48
    if c.size == 0:
        raise ValueError("RLE 'counts' is empty")
    if c.min() < 0 or c.max() > 63:
        raise ValueError("RLE 'counts' has characters outside '0'..'o' (not a pycocotools compressed RLE)")
    last = (c & 0x20) == 0                                   # the last group of each run
    if not last[-1]:
        raise ValueError("RLE 'counts' ends inside a run (cut off)")
    starts = np.r_[0, np.flatnonzero(last)[:-1] + 1]
    groups = np.diff(np.r_[starts, c.size])
    if groups.max() > 6:                                     # 30 bits: far beyond any h*w of 8192 x 8192
        raise ValueError("RLE 'counts' has a run of more than 6 characters (not a pycocotools compressed RLE)")
    k = np.arange(c.size) - np.repeat(starts, groups)        # the group's place within its run
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    x -= np.where(c[last] & 0x10 != 0, 1 << (5 * groups), 0)  # sign-extend the negative ones
    x[1::2] = np.cumsum(x[1::2])                             # undo the differences: run 3 = x3 + run 1, ...
    x[2::2] = np.cumsum(x[2::2])                             # run 4 = x4 + run 2, ... (run 0 stands alone)
    return x


def compressed_rle_problem(counts: Union[str, bytes], h: int, w: int) -> Optional[str]:
    """Why pycocotools cannot decode the compressed RLE string `counts` of an h x w mask, or None. Its C decoder
    trusts the string: a character outside '0'..'o', a run cut off at the end, a negative run or runs that do
    not add up to h*w make it read or write past its buffers (a hang or a crash, not an error)."""
    try:
        runs = compressed_rle_runs(counts)
    except ValueError as e:
        return str(e)
    if runs.min() < 0:
        return "RLE 'counts' decodes to a negative run"
    if runs.sum() != h * w:
        return f"RLE 'counts' runs add up to {int(runs.sum())} pixels, not h*w = {h * w}"
    return None
