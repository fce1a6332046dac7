"""Paths and helpers shared by the deployment tests (their session fixtures are in tests/conftest.py)."""
import json

import numpy as np
from conftest import MINI, VAL_ANN, cli

# 480x270 (resized to 768x432, padded to 448x768: the TrashCan light-R18's static export size) and 480x360
IMAGES = [MINI / "val" / "vid_000002_frame0000017.jpg", MINI / "val" / "vid_000106_frame0000032.jpg"]
# The R50 test models' test scale (input 448x768): smaller than the config's 1333x800, for time
R50_SCALE = "data.test.pipeline.1.img_scale=(768, 448)"


def pseudo_ground_truth(results, num_images, path):
    """A COCO file of the first `num_images` val images whose annotations are `results` of score >= 0.3.

    The test weights are random (AP 0 on the TrashCan labels, which would compare nothing), so an AP comparison
    scores against the native instances: a non-zero AP that any change of the instances would move."""
    gt = json.loads(VAL_ANN.read_text())
    gt["images"] = gt["images"][:num_images]
    gt["annotations"] = [dict(id=k + 1, image_id=o["image_id"], category_id=o["category_id"], iscrowd=0,
                              segmentation=o["segmentation"], bbox=o["bbox"], area=o["bbox"][2] * o["bbox"][3])
                         for k, o in enumerate(results) if o["score"] >= 0.3]
    path.write_text(json.dumps(gt))
    return path, gt


def assert_valuation_gives_native_ap(model, native, folder, num_images=12):
    """valuation.py --model `model` (no config) on the first `num_images` val images, scored against
    `pseudo_ground_truth(native)`: the 12 COCO numbers and the per-class AP and AP50 of segm and bbox equal those of
    the `native` results to 1e-4."""
    from solov2.evaluation.coco_eval import evaluate_results, load_coco
    pseudo, gt = pseudo_ground_truth(native, num_images, folder / "pseudo_gt.json")
    r = cli("valuation.py", "--model", model, "--ann", pseudo, "--img-prefix", MINI / "val", "--max-images",
            str(num_images), "--out", folder / "exported.json")
    assert r.returncode == 0, r.stderr[-3000:]
    coco = load_coco(str(pseudo))
    a = evaluate_results(coco, native, ("segm", "bbox"))
    b = evaluate_results(coco, json.loads((folder / "exported.json").read_text()), ("segm", "bbox"))
    assert len(gt["annotations"]) > 20 and a["segm"]["AP"] > 0.3, (len(gt["annotations"]), a["segm"])
    for t in ("segm", "bbox"):
        np.testing.assert_allclose(b[t]["stats"], a[t]["stats"], rtol=0, atol=1e-4, err_msg=t)
        per_class = [[(c["AP"], c["AP50"]) for c in m[t]["per_class"]] for m in (a, b)]
        np.testing.assert_allclose(per_class[1], per_class[0], rtol=0, atol=1e-4, err_msg=t)


def edit_sidecar(model, **changes):
    """The sidecar of `model` with top-level keys replaced, or preprocess keys (`preprocess_<key>=value`)."""
    side = model.parent / (model.name + ".json")
    d = json.loads(side.read_text())
    for key, value in changes.items():
        if key.startswith("preprocess_"):
            d["preprocess"][key[len("preprocess_"):]] = value
        else:
            d[key] = value
    side.write_text(json.dumps(d))
    return model
