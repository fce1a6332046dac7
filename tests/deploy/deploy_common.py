"""Paths and helpers shared by the deployment tests (their session fixtures are in tests/conftest.py)."""
import json

from conftest import MINI, VAL_ANN

# 480x270 (resized to 768x432, padded to 448x768: the TrashCan light-R18's static export size) and 480x360
IMAGES = [MINI / "val" / "vid_000002_frame0000017.jpg", MINI / "val" / "vid_000106_frame0000032.jpg"]


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
