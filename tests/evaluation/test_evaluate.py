"""COCO evaluation: scoring of known results, the valuation.py CLI, and one model run over two val images."""
import copy
import json
import math
import re
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from conftest import REPO, SHARED, reference_config
from solov2.evaluation.coco_eval import check_ground_truth, check_results, evaluate_results, load_coco
from solov2.evaluation.results import predict_dataset
from solov2.inference import Predictor, resolve_class_names
from solov2.errors import SolovError

MINI = SHARED / "datasets" / "trashcan_mini"
VAL_ANN = MINI / "annotations" / "instances_val_trashcan.json"
VAL_IMG = MINI / "val"
PYTHON = REPO / ".venv" / "bin" / "python"
if not PYTHON.is_file():
    PYTHON = sys.executable


@pytest.fixture(scope="module")
def gt():
    if not VAL_ANN.is_file():
        pytest.fail(f"dataset missing: {VAL_ANN} (set SOLOV2_SHARED to the shared/ folder)")
    return load_coco(VAL_ANN)


@pytest.fixture(scope="module")
def perfect(gt):
    """Every GT instance as a result with score 1; the mask is pycocotools' own rasterisation of the GT
    polygons (annToRLE, what COCOeval compares against), so segm IoU is exactly 1."""
    out = []
    for a in gt.dataset["annotations"]:
        rle = gt.annToRLE(a)
        out.append(dict(image_id=a["image_id"], category_id=a["category_id"], score=1.0,
                        segmentation=dict(size=list(rle["size"]), counts=rle["counts"].decode("ascii"))))
    return out


def _run_cli(*args):
    return subprocess.run([str(PYTHON), str(REPO / "valuation.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------ scoring
def test_perfect_predictions_score_one(gt, perfect):
    m = evaluate_results(gt, copy.deepcopy(perfect), ("segm", "bbox"))
    assert m["segm"]["AP"] == 1.0 and m["segm"]["AP50"] == 1.0
    assert len(m["segm"]["per_class"]) == 22                    # every TrashCan class has val GT
    assert all(c["AP"] == 1.0 and c["AP50"] == 1.0 for c in m["segm"]["per_class"])
    assert [c["name"] for c in m["segm"]["per_class"]][:2] == ["rov", "plant"]
    # bbox from the mask: the GT boxes are the polygon extents (floats, ~1 px past the right/bottom pixel edge,
    # see the dataset README), the mask box is the tight pixel box, so a few small objects fall below IoU 0.95
    # and AP is just under 1 while AP50/AP75 stay exact.
    assert m["bbox"]["AP50"] == 1.0 and m["bbox"]["AP75"] == 1.0
    assert 0.99 < m["bbox"]["AP"] < 1.0
    ious = [mask_util.iou([list(mask_util.toBbox(r["segmentation"]))], [a["bbox"]], [0])[0, 0]
            for r, a in zip(perfect, gt.dataset["annotations"])]
    assert min(ious) < 0.95                                     # the reason for the shortfall above


def test_perfect_gt_boxes_score_one(gt, perfect):
    # a record's own bbox is what the bbox evaluation scores: the GT boxes themselves give exactly 1
    results = [dict(r, bbox=list(a["bbox"])) for r, a in zip(perfect, gt.dataset["annotations"])]
    m = evaluate_results(gt, results, ("bbox",))
    assert list(m) == ["bbox"] and m["bbox"]["AP"] == 1.0


def test_dropping_half_lowers_ap(gt, perfect):
    m = evaluate_results(gt, copy.deepcopy(perfect[::2]), ("segm", "bbox"))
    for t in ("segm", "bbox"):
        assert 0.25 < m[t]["AP"] < 0.75, (t, m[t]["AP"])        # ~half the recall in each class


def test_shuffled_labels_score_near_zero(gt, perfect):
    rng = np.random.default_rng(0)
    cats = sorted(gt.getCatIds())
    wrong = [dict(r, category_id=int(rng.choice([c for c in cats if c != r["category_id"]]))) for r in perfect]
    m = evaluate_results(gt, wrong, ("segm", "bbox"))
    assert m["segm"]["AP"] < 0.05 and m["bbox"]["AP"] < 0.05


def test_empty_results_give_zero(gt):
    m = evaluate_results(gt, [], ("segm", "bbox"))              # pycocotools loadRes would crash on []
    for t in ("segm", "bbox"):
        assert m[t]["AP"] == 0.0 and all(c["AP"] == 0.0 for c in m[t]["per_class"])


def test_results_are_not_mutated(gt, perfect):
    results = copy.deepcopy(perfect[:5])
    evaluate_results(gt, results, ("segm",))
    assert results == perfect[:5]                               # loadRes would add area/id/iscrowd/bbox


def test_zero_based_category_is_refused(gt, perfect):
    bad = [dict(perfect[0], category_id=0)]                    # the classic label-vs-category-id slip
    with pytest.raises(SolovError, match="category_id 0 is not a category"):
        evaluate_results(gt, bad, ("segm",))


def test_mask_of_wrong_size_is_refused(gt, perfect):
    rle = mask_util.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    bad = [dict(perfect[0], segmentation=dict(size=[10, 10], counts=rle["counts"].decode()))]
    with pytest.raises(SolovError, match="mask size"):
        evaluate_results(gt, bad, ("segm",))


def test_mask_whose_runs_do_not_add_up_is_refused(gt, perfect):
    """pycocotools' decoder trusts the runs (a cut or edited string makes it read past its buffer): refused."""
    counts = perfect[0]["segmentation"]["counts"]
    bad = [dict(perfect[0], segmentation=dict(perfect[0]["segmentation"], counts=counts[:-1]))]
    # check_results, which evaluate_results calls first: without the check this fails, where COCOeval would hang
    with pytest.raises(SolovError, match=r"result #0: RLE 'counts' (runs add up to \d+ pixels|ends inside a run)"):
        check_results(bad, load_coco(VAL_ANN), ("segm",))


def test_missing_annotation_file(tmp_path):
    with pytest.raises(SolovError, match="nope.json: no such annotation file"):
        load_coco(tmp_path / "nope.json")


def test_duplicate_image_id_is_refused(tmp_path):
    """pycocotools would keep one of the two entries and count that image's results twice."""
    data = json.loads(VAL_ANN.read_text())
    data["images"].append(dict(data["images"][0], file_name="copy.jpg"))
    (tmp_path / "dup.json").write_text(json.dumps(data))
    n = len(data["images"]) - 1
    with pytest.raises(SolovError, match=rf"dup.json: image entries #0 and #{n} have the same id "
                                         rf"{data['images'][0]['id']}$"):
        load_coco(tmp_path / "dup.json")


@pytest.mark.parametrize("change, fragment", [
    (lambda a: a.pop("id"), "annotation #3 lacks one of id/image_id/category_id/area/bbox/iscrowd"),
    (lambda a: a.pop("iscrowd"), "annotation #3 lacks one of"),
])
def test_annotation_pycocotools_cannot_read_is_refused_at_load(tmp_path, change, fragment):
    """pycocotools would raise a KeyError deep in createIndex or COCOeval, after the model run."""
    data = json.loads(VAL_ANN.read_text())
    change(data["annotations"][3])
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(SolovError, match=re.escape(f"bad.json: {fragment}")):
        load_coco(tmp_path / "bad.json")


def _rle_of_the_annotated_image(data, ann, shrink=0):
    """A compressed RLE of `ann`'s image size (`shrink` rows fewer in its runs, the declared size kept)."""
    img = next(i for i in data["images"] if i["id"] == ann["image_id"])
    rle = mask_util.encode(np.asfortranarray(np.ones((img["height"] - shrink, img["width"]), np.uint8)))
    return dict(size=[img["height"], img["width"]], counts=rle["counts"].decode())


@pytest.mark.parametrize("segmentation, problem", [
    (None, "has no 'segmentation'"), ([], "'segmentation' is neither"),
    ([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4]], "fewer than 3 points"), ({"counts": "x"}, "RLE without a [h, w] 'size'"),
    ("runs short by a row", "runs add up to"), ("uncompressed, short by one", "summing to h*w")])
def test_segm_evaluation_needs_every_segmentation(tmp_path, perfect, segmentation, problem):
    """An annotation without a segmentation pycocotools can rasterise (none, an empty list as box-only exports
    write, a 2-point part, an RLE without size, RLE runs that do not cover the image, which its C code would
    read past): the segm evaluation is refused before any model runs (valuation.py checks it right after reading
    the file, where pycocotools would raise an IndexError after the run); the same file still scores boxes."""
    data = json.loads(VAL_ANN.read_text())
    ann = data["annotations"][5]
    if segmentation is None:
        del ann["segmentation"]
    elif segmentation == "runs short by a row":
        ann["segmentation"] = _rle_of_the_annotated_image(data, ann, shrink=1)
    elif segmentation == "uncompressed, short by one":
        rle = _rle_of_the_annotated_image(data, ann)
        ann["segmentation"] = dict(size=rle["size"], counts=[0, rle["size"][0] * rle["size"][1] - 1])
    else:
        ann["segmentation"] = segmentation
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    coco = load_coco(tmp_path / "boxes.json")
    with pytest.raises(SolovError, match=rf"boxes.json: annotation id {ann['id']}[ :].*{re.escape(problem)}"
                                         r".*segm evaluation"):
        check_ground_truth(coco, ("segm", "bbox"))
    check_ground_truth(coco, ("bbox",))
    boxes = [dict(r, bbox=[float(v) for v in mask_util.toBbox(r["segmentation"])]) for r in perfect]
    assert evaluate_results(coco, [{k: v for k, v in r.items() if k != "segmentation"} for r in boxes],
                            ("bbox",))["bbox"]["AP"] > 0.9


# ------------------------------------------------------------------------------------------ predict_dataset
def _gt_predictor(gt, cfg):
    """Stand-in for Predictor that 'predicts' the GT of the image it is given (found by pixel content)."""
    cat_ids = sorted(gt.getCatIds())
    by_pixels = {}
    for img in gt.dataset["images"][:3]:
        by_pixels[cv2.imread(str(VAL_IMG / img["file_name"])).tobytes()] = img["id"]

    def finish(img_id, meta):
        anns = gt.loadAnns(gt.getAnnIds(imgIds=img_id))
        return dict(masks=np.stack([gt.annToMask(a).astype(bool) for a in anns]),
                    labels=np.array([cat_ids.index(a["category_id"]) for a in anns], np.int64),
                    scores=np.ones(len(anns), np.float32))
    # The Predictor's three stages: prepare(img) -> (x, meta), network(x) -> outputs, finish(outputs, meta)
    return SimpleNamespace(class_names=resolve_class_names(cfg), source=cfg.source,
                           check_size=lambda h, w: None, prepare=lambda img_bgr: (img_bgr, {}),
                           network=lambda x: by_pixels[x.tobytes()], finish=finish)


def test_predict_dataset_maps_channels_to_category_ids(gt):
    cfg = reference_config()
    results = predict_dataset(_gt_predictor(gt, cfg), VAL_ANN, str(VAL_IMG), max_images=3, progress=False)
    ids = [img["id"] for img in gt.dataset["images"][:3]]
    assert {r["image_id"] for r in results} == set(ids)
    assert len(results) == len(gt.getAnnIds(imgIds=ids))
    m = evaluate_results(gt, results, ("segm", "bbox"), img_ids=ids)
    assert m["segm"]["AP"] == 1.0                               # an off-by-one channel->category would be 0
    assert m["bbox"]["AP50"] == 1.0
    # scoring the 3 images against the whole split counts the other images' GT as missed
    assert evaluate_results(gt, results, ("segm",))["segm"]["AP"] < 1.0


def test_predict_dataset_missing_image(gt, tmp_path):
    data = json.loads(VAL_ANN.read_text())
    data["images"][0]["file_name"] = "missing.jpg"
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(SolovError, match="missing.jpg: no such image file"):
        predict_dataset(_gt_predictor(gt, reference_config()), ann, str(VAL_IMG), progress=False)


def test_predict_dataset_class_count_mismatch(gt, tmp_path):
    data = json.loads(VAL_ANN.read_text())
    data["categories"] = data["categories"][:3]
    ann = tmp_path / "three.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(SolovError, match=r"three.json: 3 categories, but the model has 22 classes"):
        predict_dataset(_gt_predictor(gt, reference_config()), ann, str(VAL_IMG), progress=False)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_scores_results_file(tmp_path, perfect):
    res = tmp_path / "results.json"
    res.write_text(json.dumps(perfect))
    p = _run_cli("--results", res, "--ann", VAL_ANN)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert sum(line.startswith(" Average Precision") for line in lines) == 12     # 6 per type, 2 types
    assert sum(line.startswith(" Average Recall") for line in lines) == 12
    assert "per-class segm AP (IoU=0.50:0.95, area=all, maxDets=100; '-' = no ground truth):" in lines
    assert any(line.split() == ["rov", "1.000", "1.000"] for line in lines)
    assert any(line.split() == ["trash_net", "1.000", "1.000"] for line in lines)
    assert lines[-1].startswith("segm AP 1.000 AP50 1.000 | bbox AP ")


def _assert_user_error(p, *fragments):
    assert p.returncode == 2, (p.stdout, p.stderr)
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    for f in fragments:
        assert f in err[0], err[0]


def test_cli_missing_results_file(tmp_path):
    _assert_user_error(_run_cli("--results", tmp_path / "none.json", "--ann", VAL_ANN),
                       "none.json: no such results file")


def test_cli_results_file_is_a_dict(tmp_path):
    res = tmp_path / "dict.json"
    res.write_text(json.dumps({"annotations": []}))
    _assert_user_error(_run_cli("--results", res, "--ann", VAL_ANN), "dict.json: not a COCO results file")


def test_cli_class_count_mismatch(tmp_path):
    data = json.loads(VAL_ANN.read_text())
    data["categories"] = data["categories"][:3]
    ann = tmp_path / "three.json"
    ann.write_text(json.dumps(data))
    # the check runs before the model is built, so no checkpoint file is needed to reach it
    cfg = REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x_trashcan.py"
    _assert_user_error(_run_cli("--config", cfg, "--checkpoint", tmp_path / "x.ckpt", "--ann", ann,
                                "--img-prefix", VAL_IMG), "three.json: 3 categories", "22 classes")


# ------------------------------------------------------------------------------------------ model end to end
def test_reference_model_on_two_val_images(gt, reference_net):
    # reference weights are synthetic (not trained): the AP value means nothing, the path must just work
    pred = Predictor(reference_config(), net=reference_net)
    results = predict_dataset(pred, VAL_ANN, str(VAL_IMG), max_images=2, progress=False)
    ids = [img["id"] for img in gt.dataset["images"][:2]]
    assert sorted({r["image_id"] for r in results}) == sorted(ids) and len(results) == 200   # 100 per image
    for r in results:
        info = gt.imgs[r["image_id"]]
        assert r["image_id"] in ids and r["category_id"] in gt.cats
        assert r["segmentation"]["size"] == [info["height"], info["width"]]
        assert isinstance(r["segmentation"]["counts"], str) and 0.0 <= r["score"] <= 1.0
        assert r["bbox"] == [float(v) for v in mask_util.toBbox(r["segmentation"])]
    m = evaluate_results(gt, json.loads(json.dumps(results)), ("segm", "bbox"), img_ids=ids)
    for t in ("segm", "bbox"):
        assert math.isfinite(m[t]["AP"]) and 0.0 <= m[t]["AP"] <= 1.0
