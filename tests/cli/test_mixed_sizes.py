"""Mixed image sizes: GRAPH-mode inference compiles one network graph for all of them, with flat memory and the
same instances as PYNATIVE, through the real run.py and valuation.py.

Before dynamic shapes each new padded size compiled another graph (10-18 s, +1.8 GB resident never freed), so
20 images of 20 sizes would have needed ~36 GB here. One image per size: a size met again adds nothing that the
first meeting of each size does not already show (a graph per size, or memory growth per size); a leak per image
(not per size) would have to exceed ~55 MB per image to cross the 1 GB bound over these 18 extra images.
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO, SHARED, TRASHCAN_CFG, match_instances

from solov2.data.transforms import rescale_size

VAL = SHARED / "datasets" / "trashcan_mini" / "val"
VAL_ANN = SHARED / "datasets" / "trashcan_mini" / "annotations" / "instances_val_trashcan.json"
TEST_SCALE = (768, 448)  # the config's test img_scale


def padded_size(h, w):
    (nh, nw), _ = rescale_size(h, w, TEST_SCALE)
    return -(-nh // 32) * 32, -(-nw // 32) * 32


def distinct_sizes(n):
    """n (h, w) image sizes whose padded network inputs all differ (aspect ratios 0.4 .. 2.2, both ways)."""
    by_pad = {}
    for k in range(8, 45):
        h, w = 300, int(round(300 * k / 20))
        by_pad.setdefault(padded_size(h, w), (h, w))
    sizes = list(by_pad.values())
    assert len(sizes) >= n
    return sizes[:n]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """20 trashcan_mini val images resized to 20 sizes with distinct padded inputs, and their COCO annotations."""
    d = tmp_path_factory.mktemp("mixed")
    (d / "img").mkdir()
    gt = json.loads(VAL_ANN.read_text())
    by_image = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    sources = [im for im in gt["images"] if im["id"] in by_image][:20]
    images, anns = [], []
    for k, (im, (h, w)) in enumerate(zip(sources, distinct_sizes(20))):
        img = cv2.imread(str(VAL / im["file_name"]))
        name = f"mixed_{k:02d}_{h}x{w}.jpg"
        cv2.imwrite(str(d / "img" / name), cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
        sx, sy = w / im["width"], h / im["height"]
        images.append(dict(id=k + 1, file_name=name, height=h, width=w))
        for a in by_image[im["id"]]:
            seg = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(poly)] for poly in a["segmentation"]]
            x, y, bw, bh = a["bbox"]
            anns.append(dict(id=len(anns) + 1, image_id=k + 1, category_id=a["category_id"], iscrowd=0,
                             segmentation=seg, bbox=[x * sx, y * sy, bw * sx, bh * sy], area=a["area"] * sx * sy))
    (d / "ann.json").write_text(json.dumps(dict(images=images, annotations=anns, categories=gt["categories"])))
    assert len({padded_size(im["height"], im["width"]) for im in images}) == 20
    return d


def results_by_file(path):
    by = {}
    for r in json.loads(path.read_text()):
        by.setdefault(r["file_name"], []).append(r)
    return by


def test_graph_mode_compiles_once_with_flat_memory_and_pynative_results(mixed, ckpt, tmp_path):
    subsets = {"two": tmp_path / "two"}
    subsets["two"].mkdir()
    for p in sorted((mixed / "img").iterdir())[:2]:
        (subsets["two"] / p.name).write_bytes(p.read_bytes())
    runs = {}
    for name, inp, mode in [("two", subsets["two"], "graph"), ("graph", mixed / "img", "graph"),
                            ("pynative", mixed / "img", "pynative")]:
        log = tmp_path / f"{name}.log"
        with open(log, "w") as f:
            p = subprocess.Popen([sys.executable, "run.py", str(TRASHCAN_CFG), str(ckpt), str(inp),
                                  "--out", str(tmp_path / f"out_{name}"), "--mode", mode], cwd=REPO, stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
            _, status, usage = os.wait4(p.pid, 0)  # the rusage of this child alone (ru_maxrss in KB on Linux)
            p.returncode = os.waitstatus_to_exitcode(status)
        out = log.read_text()
        assert p.returncode == 0, out[-3000:]
        runs[name] = dict(out=out, rss_gb=usage.ru_maxrss / 1e6)
    assert "20 image(s)" in runs["graph"]["out"]
    assert "GRAPH mode: 1 network graph(s) compiled" in runs["graph"]["out"], runs["graph"]["out"]
    growth = runs["graph"]["rss_gb"] - runs["two"]["rss_gb"]
    assert growth < 1.0, f"peak RSS grew {growth:.2f} GB from 2 images to 20 of 20 sizes"
    graph, pynative = results_by_file(tmp_path / "out_graph" / "results.json"), \
        results_by_file(tmp_path / "out_pynative" / "results.json")
    assert len(graph) >= 15 and set(pynative) == set(graph)  # nearly every image has instances
    for name in pynative:   # every padded size once
        match_instances(pynative[name], graph[name])

    # valuation.py over the first 20 images (all 20 sizes): one compile too, and the instances run.py found
    out_json = tmp_path / "val_results.json"
    r = subprocess.run([sys.executable, "valuation.py", "--config", str(TRASHCAN_CFG), "--checkpoint", str(ckpt),
                        "--ann", str(mixed / "ann.json"), "--img-prefix", str(mixed / "img"), "--out", str(out_json),
                        "--max-images", "20"], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "GRAPH mode: 1 network graph(s) compiled" in r.stdout, r.stdout[-2000:]
    evaluated = results_by_file(out_json)
    assert set(evaluated) == set(pynative)
    for name in evaluated:
        match_instances(graph[name], evaluated[name], iou_min=1.0, score_tol=0.0)


@pytest.mark.parametrize("static_shapes, graphs", [(True, 2), (False, 1)])
def test_compile_counter(reference_net, static_shapes, graphs):
    """The count the CLIs print: per padded size with static_shapes, once otherwise (GRAPH mode)."""
    from conftest import in_mode, reference_config
    from solov2.inference import Predictor
    with in_mode("graph"):
        pred = Predictor(reference_config(), net=reference_net, static_shapes=static_shapes)
        for h, w in distinct_sizes(2):
            pred.predict(np.zeros((h, w, 3), np.uint8))
        assert pred.compiled_graphs == graphs
