"""Results export: RLE masks, boxes, COCO records."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from conftest import SHARED

from solov2.evaluation.results import instances_to_records, mask_to_bbox, mask_to_rle

REF = SHARED / "fixtures" / "reference"


def _ref_file(name):
    path = REF / name
    if not path.is_file():
        pytest.fail(f"reference fixture missing: {path} (set SOLOV2_SHARED to the shared/ folder)")
    return path


def _random_mask(shape=(37, 53), seed=0):
    return np.random.default_rng(seed).random(shape) > 0.6


def test_rle_round_trip():
    mask = _random_mask()
    rle = mask_to_rle(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), mask)
    assert mask_util.area(rle) == mask.sum()


def test_rle_equals_official_encoding():
    # the official tools/test_ins.py RLE of the fixture's final masks: decode -> re-encode gives the same string
    results = json.loads(_ref_file("inference_trashcan_val.json").read_text())["results"]
    for r in results[:20]:
        mask = mask_util.decode(r["segmentation"]).astype(bool)
        assert mask_to_rle(mask) == {"size": list(r["segmentation"]["size"]), "counts": r["segmentation"]["counts"]}


def test_bbox_of_rectangle():
    mask = np.zeros((40, 60), bool)
    mask[10:20, 5:35] = True                       # rows 10..19, cols 5..34
    assert mask_to_bbox(mask) == [5.0, 10.0, 30.0, 10.0]
    mask[25, 50] = True                            # one extra pixel widens the tight box
    assert mask_to_bbox(mask) == [5.0, 10.0, 46.0, 16.0]


def test_bbox_of_empty_mask():
    assert mask_to_bbox(np.zeros((8, 9), bool)) == [0.0, 0.0, 0.0, 0.0]


def test_records_are_json_serialisable():
    masks = np.stack([_random_mask(seed=s) for s in range(3)])
    labels = np.array([2, 0, 2], np.int64)
    scores = np.array([0.9, 0.5, 0.25], np.float32)
    names = ["a", "b", "c"]
    recs = instances_to_records("img.jpg", masks, labels, scores, names, image_id=np.int64(7),
                                category_ids=[1, 5, 9])
    text = json.dumps(recs)                        # numpy scalars would raise here
    back = json.loads(text)
    assert [r["label"] for r in back] == [2, 0, 2]
    assert [r["category_name"] for r in back] == ["c", "a", "c"]
    assert [r["category_id"] for r in back] == [9, 1, 9]
    assert all(r["image_id"] == 7 and r["file_name"] == "img.jpg" for r in back)
    assert all(type(r["score"]) is float for r in recs)
    np.testing.assert_allclose([r["score"] for r in back], scores, rtol=1e-7)
    for r, m in zip(back, masks):
        np.testing.assert_array_equal(mask_util.decode(r["segmentation"]).astype(bool), m)
        assert r["bbox"] == mask_to_bbox(m)


def test_records_without_coco_ids():
    recs = instances_to_records("x.png", _random_mask()[None], [1], [0.3], ["a", "b"])
    assert "image_id" not in recs[0] and "category_id" not in recs[0]
    assert set(recs[0]) == {"file_name", "label", "category_name", "score", "bbox", "segmentation"}


def test_records_length_mismatch_rejected():
    with pytest.raises(ValueError):
        instances_to_records("x.png", _random_mask()[None], [1, 2], [0.3], ["a", "b", "c"])
