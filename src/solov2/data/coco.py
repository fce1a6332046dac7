"""COCO-format instance dataset with the loading rules of the official SOLO (mmdetection 1.x) CocoDataset.

Official rules reproduced (mmdet/datasets/coco.py, pipelines/loading.py):
* label of category ``cat_ids[k]`` is ``k + 1`` (1..C; 0 is background in the SOLO cate grid);
* annotations with ``ignore``, ``iscrowd``, ``area <= 0``, ``w < 1`` or ``h < 1`` are not used;
* boxes are legacy ``[x1, y1, x1 + w - 1, y1 + h - 1]`` float32;
* masks: polygons -> ``frPyObjects`` + ``merge`` + ``decode``, uncompressed RLE -> ``frPyObjects`` + ``decode``,
  compressed RLE -> ``decode``; uint8 {0, 1} at the annotated image size;
* images with ``min(width, height) < min_size`` are dropped, and with ``filter_empty_gt`` images without
  annotations too.

Deviations (documented on purpose):
* ``filter_empty_gt`` drops images without a *usable* instance (one that survives the rules above). The
  official filter keeps an image that only has crowd/degenerate annotations; its ``LoadAnnotations``
  (``skip_img_without_anno=True``) then returns None and the dataset draws another random image in its place.
  Dropping it up front trains on the same images, without the random replacement (an epoch is shorter by those
  images). With ``filter_empty_gt=False`` such images are kept and give empty GT.
* ``class_names``/``cat_ids`` are in ascending category-id order (the channel rule of `solov2.data.coco_file`).
* Broken input raises `DatasetError` (one line: file + problem) instead of an arbitrary exception.

When broken input is detected:
* at construction (cheap checks): missing annotation file, invalid JSON, missing top-level keys, malformed
  image entries, malformed annotations of the considered images (bbox/area/category/segmentation structure,
  RLE size != image size), missing image files;
* at indexing (needs decoding): unreadable image, decoded size != annotated size, pycocotools failing on a
  segmentation.
With ``skip_bad=True`` an image that fails a construction-time check is left out with a warning; an image that
fails at indexing time is warned about and the next index (cyclically) is returned instead, like the
official ``_rand_another`` retry but deterministic.
"""
import math
import os
import warnings
from typing import Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_utils

from solov2.data.coco_file import image_entry_problem, is_number, read_coco_file, rle_problem, sorted_categories
from solov2.data.images import read_image
from solov2.errors import SolovError


class DatasetError(SolovError):
    """Broken dataset input; the message is one line naming the file and the problem."""


def _check_segmentation(seg, h: int, w: int) -> Optional[str]:
    """Structural check of a COCO segmentation (an RLE's runs too: pycocotools trusts them); the decoding itself is
    left to pycocotools (official path)."""
    if isinstance(seg, list):
        if not seg:
            return "empty polygon list"
        for poly in seg:
            # type() checks + one sum keep this cheap on COCO-sized files (millions of coordinates)
            if (not isinstance(poly, list) or not poly or not all(type(v) in (int, float) for v in poly)
                    or not math.isfinite(sum(poly))):
                return "polygon is not a list of finite numbers"
            if len(poly) % 2 or len(poly) < 6:  # pycocotools would read 4 numbers as a box, not a polygon
                return f"polygon has {len(poly)} coordinates (a polygon needs >= 3 points: an even number >= 6)"
        return None
    if isinstance(seg, dict):
        return rle_problem(seg, h, w)
    return f"segmentation is {type(seg).__name__}, not polygons or RLE"


def _parse_annotations(anns: list, h: int, w: int, cat2label: Dict[int, int], notes: Dict[str, list]):
    """Official ``_parse_ann_info`` plus validation.

    Returns (gt_bboxes float32 (n, 4), gt_labels int64 (n,), segmentations list[n], error str or None).
    Annotations that are used but suspicious, or dropped by the official rules, are listed by id in `notes`
    ('degenerate': zero area or a box under 1 px, not used; 'outside': box more than 1 px outside the image).
    """
    bboxes, labels, segs = [], [], []
    for ann in anns:
        aid = ann.get("id", "?")
        if ann.get("ignore", False):
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
            return None, None, None, f"annotation {aid}: 'bbox' is not 4 finite numbers"
        if not is_number(ann.get("area")):
            return None, None, None, f"annotation {aid}: 'area' missing or not a number"
        x1, y1, bw, bh = bbox
        if ann["area"] <= 0 or bw < 1 or bh < 1:
            if not ann.get("iscrowd", False):
                notes.setdefault("degenerate", []).append(aid)
            continue
        if x1 < -1 or y1 < -1 or x1 + bw > w + 1 or y1 + bh > h + 1:
            notes.setdefault("outside", []).append(aid)
        if ann.get("iscrowd", False):
            continue  # official: gt_bboxes_ignore, which SOLO never uses
        if ann.get("category_id") not in cat2label:
            return None, None, None, f"annotation {aid}: unknown category_id {ann.get('category_id')!r}"
        if "segmentation" not in ann:
            return None, None, None, f"annotation {aid}: no 'segmentation'"
        problem = _check_segmentation(ann["segmentation"], h, w)
        if problem:
            return None, None, None, f"annotation {aid}: {problem}"
        bboxes.append([x1, y1, x1 + bw - 1, y1 + bh - 1])
        labels.append(cat2label[ann["category_id"]])
        segs.append(ann["segmentation"])
    gt_bboxes = np.array(bboxes, dtype=np.float32).reshape(-1, 4)
    gt_labels = np.array(labels, dtype=np.int64)
    return gt_bboxes, gt_labels, segs, None


def decode_segmentation(seg, h: int, w: int) -> np.ndarray:
    """COCO polygons / uncompressed RLE / compressed RLE -> uint8 {0,1} (h, w) mask (official ``_poly2mask``)."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle)


class CocoDataset:
    """Random-access COCO instance dataset (official SOLO loading rules; see the module docstring).

    Args:
        ann_file: COCO instances JSON.
        img_prefix: folder that ``file_name`` is relative to.
        skip_bad: skip broken images with a warning instead of raising `DatasetError`.
        max_images: keep only the first N usable images (file order, after filtering); None = all.
            Images after the first N are not validated.
        filter_empty_gt: drop images without a usable instance.
        min_size: drop images whose annotated min(width, height) is below this.

    ``ds[i]`` -> dict(img BGR uint8 (H, W, 3), gt_bboxes float32 (n, 4) legacy x2 = x1 + w - 1,
    gt_labels int64 (n,) in 1..C, gt_masks uint8 (n, H, W), filename str, image_id).
    ``class_names[c - 1]`` / ``cat_ids[c - 1]`` are the name / category id of label c.
    """

    def __init__(self, ann_file: str, img_prefix: str, skip_bad: bool = False, max_images: Optional[int] = None,
                 filter_empty_gt: bool = True, min_size: int = 32):
        self.ann_file = str(ann_file)
        self.img_prefix = str(img_prefix)
        self.skip_bad = skip_bad
        self.min_size = min_size
        self.filter_empty_gt = filter_empty_gt
        data = read_coco_file(self.ann_file, DatasetError)
        self.cat_ids, self.class_names = sorted_categories(self.ann_file, data["categories"], DatasetError)
        self.cat2label = {cat_id: i + 1 for i, cat_id in enumerate(self.cat_ids)}

        anns_by_image: Dict[object, list] = {}
        for j, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann:
                self._bad(f"annotation entry #{j} is not an object with an 'image_id'")
                continue
            anns_by_image.setdefault(ann["image_id"], []).append(ann)

        self.records: List[dict] = []
        self._notes: Dict[str, list] = {}
        for i, info in enumerate(data["images"]):
            if max_images is not None and len(self.records) >= max_images:
                break
            record = self._build_record(i, info, anns_by_image)
            if record is not None:
                self.records.append(record)
        for kind, what in (("degenerate", "have zero area or a box under 1 px and are not used (as officially)"),
                           ("outside", "have a box more than 1 px outside their image (used; check them)")):
            ids = self._notes.get(kind, [])
            if ids:
                shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
                warnings.warn(f"{self.ann_file}: {len(ids)} annotation(s) {what}: ids {shown}", stacklevel=2)
        self._bad_indices = set()  # indices found broken at indexing time (skip_bad=True only)

    def _bad(self, problem: str, path: Optional[str] = None) -> None:
        msg = f"{path or self.ann_file}: {problem}"
        if not self.skip_bad:
            raise DatasetError(msg)
        warnings.warn(f"skipping bad input: {msg}", stacklevel=3)

    def _build_record(self, i: int, info, anns_by_image) -> Optional[dict]:
        problem = image_entry_problem(i, info)
        if problem:
            self._bad(problem)
            return None
        h, w = info["height"], info["width"]
        if min(h, w) < self.min_size:
            return None
        bboxes, labels, segs, problem = _parse_annotations(anns_by_image.get(info["id"], []), h, w, self.cat2label,
                                                           self._notes)
        if problem:
            self._bad(f"image {info['file_name']!r}: {problem}")
            return None
        if self.filter_empty_gt and len(labels) == 0:
            return None
        filename = os.path.join(self.img_prefix, info["file_name"])
        if not os.path.isfile(filename):
            self._bad("image file not found", filename)
            return None
        return dict(filename=filename, image_id=info["id"], height=h, width=w,
                    gt_bboxes=bboxes, gt_labels=labels, segmentations=segs)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, idx: int) -> dict:
        rec = self.records[idx]
        img = read_image(rec["filename"], DatasetError)
        if img.shape[:2] != (rec["height"], rec["width"]):
            raise DatasetError(f"{rec['filename']}: image is {img.shape[0]}x{img.shape[1]} but the annotation "
                               f"says {rec['height']}x{rec['width']}")
        h, w = rec["height"], rec["width"]
        masks = np.zeros((len(rec["segmentations"]), h, w), dtype=np.uint8)
        for k, seg in enumerate(rec["segmentations"]):
            try:
                masks[k] = decode_segmentation(seg, h, w)
            except Exception as e:  # pycocotools raises various types on bad input
                raise DatasetError(f"{self.ann_file}: image {os.path.basename(rec['filename'])!r}: "
                                   f"segmentation #{k} cannot be decoded ({e})") from None
        return dict(img=img, gt_bboxes=rec["gt_bboxes"].copy(), gt_labels=rec["gt_labels"].copy(), gt_masks=masks,
                    filename=rec["filename"], image_id=rec["image_id"])

    def __getitem__(self, idx: int) -> dict:
        n = len(self.records)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} images")
        idx %= n
        for step in range(n):
            j = (idx + step) % n
            if j in self._bad_indices:
                continue
            try:
                return self._load(j)
            except DatasetError as e:
                if not self.skip_bad:
                    raise
                self._bad_indices.add(j)
                warnings.warn(f"skipping bad image: {e}", stacklevel=2)
        raise DatasetError(f"{self.ann_file}: no readable image left")
