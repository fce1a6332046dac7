"""The demo: the synthetic dataset generator and a short end-to-end `python -m solov2.tools.demo` run that learns."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from conftest import REPO
from solov2.config import load_config
from solov2.evaluation.coco_eval import load_coco
from solov2.tools.synthetic import CLASSES, generate

PYTHON = REPO / ".venv" / "bin" / "python"
if not PYTHON.is_file():
    PYTHON = sys.executable
CONFIG = REPO / "configs" / "solov2" / "solov2_light_r18_demo.py"


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_is_deterministic_valid_coco(tmp_path):
    a = generate(tmp_path / "a", num_train=6, num_val=3, seed=7, h=96, w=128)
    generate(tmp_path / "b", num_train=6, num_val=3, seed=7, h=96, w=128)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")          # byte-identical jpgs and json
    generate(tmp_path / "c", num_train=6, num_val=3, seed=8, h=96, w=128)
    assert _files(tmp_path / "a") != _files(tmp_path / "c")

    for split, n in (("train", 6), ("val", 3)):
        coco = load_coco(a[f"{split}_ann"])                       # pycocotools + the project's checks
        assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == list(CLASSES)
        assert len(coco.getImgIds()) == n
        for img_id in coco.getImgIds():
            info = coco.imgs[img_id]
            img = cv2.imread(a[f"{split}_img"] + info["file_name"])
            assert img.shape == (96, 128, 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert 1 <= len(anns) <= 4
            for ann in anns:
                m = coco.annToMask(ann)
                assert m.shape == (96, 128) and m.sum() > 0
                assert ann["area"] == m.sum() and ann["iscrowd"] == 0
                assert np.allclose(ann["bbox"], mask_util.toBbox(coco.annToRLE(ann)))


def test_config_classes_match_generator():
    cfg = load_config(CONFIG)
    assert tuple(cfg.class_names) == CLASSES and cfg.head.num_classes == len(CLASSES) + 1


def test_demo_end_to_end_learns(tmp_path):
    """48 iterations from random weights (about 80 s here): enough for masks that score above 0 AP on val; a demo
    that learned nothing (no detection, or only wrong ones) fails. The warmup is shortened to fit the run."""
    out = tmp_path / "demo"
    cmd = [str(PYTHON), "-m", "solov2.tools.demo", "--out", str(out), "--epochs", "4", "--num-train", "48",
           "--num-val", "8", "--cfg-options", "lr_config.warmup_iters=24", "test_cfg.score_thr=0.05"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "demo done" in r.stdout and "segm AP" in r.stdout
    pic = cv2.imread(str(out / "predictions.jpg"))
    assert pic is not None and pic.shape[0] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["segm"]["AP"] > 0 and metrics["segm"]["AP50"] > 0 and metrics["bbox"]["AP50"] > 0, metrics
    assert metrics["settings"]["epochs"] == 4 and set(metrics["time_s"]) >= {"data", "train", "evaluate", "total"}
    results = json.loads((out / "results_val.json").read_text())
    val = load_coco(out / "data" / "annotations" / "instances_val.json")
    assert results and {x["image_id"] for x in results} <= set(val.getImgIds())
    assert {x["category_id"] for x in results} <= set(val.getCatIds())
    assert all(0.05 <= x["score"] <= 1 and x["segmentation"]["size"] == [128, 160] for x in results)
    assert (out / "work" / "epoch_4.ckpt").is_file() and not (out / "work" / "epoch_3.ckpt").exists()  # keep_last=1

    before = (out / "metrics.json").read_bytes()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)   # no --force: refused
    assert r.returncode == 2 and "--force" in r.stderr
    assert (out / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("seed", ["-1", str(2 ** 31)])
def test_demo_seed_out_of_range_is_one_line(tmp_path, seed):
    """NumPy and MindSpore take seeds in 0 .. 2**31 - 1: outside, one line naming --seed, before any work."""
    r = subprocess.run([sys.executable, "-m", "solov2.tools.demo", "--out", str(tmp_path / "d"), "--seed", seed],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "--seed" in errors[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()
