"""The training path learns on real data: overfit 4 TrashCan images through train.py, score them with valuation.py.

No pretrained weights can be downloaded here, so the TrashCan light-R18 config trains from random weights with the
from-scratch settings of the demo config (every stage trains, batch BN statistics, lr 0.02 after a short warmup,
gradient clip 10), on small images (256 x 144) and without flips, for 40 iterations of one 4-image batch
(about 5 s each here). Measured (seed 0): loss 3.6 -> ~0.7; mask AP50 on the 4 images 0.0 at iteration 1, 0.75 at 24,
1.0 at 64 (a longer run).
"""
import json
import re
import subprocess
import sys

import pytest
from conftest import REPO, SHARED

DATA = SHARED / "datasets" / "trashcan_mini"
CONFIG = REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x_trashcan.py"
IMAGES = ("vid_000035_frame0000037.jpg", "vid_000047_frame0000025.jpg",   # rov, tarp, clothing | rov
          "vid_000077_frame0000029.jpg", "vid_000144_frame0000019.jpg")   # tarp | bag  (all 480 x 270)
FROM_SCRATCH = ["model.backbone.frozen_stages=-1", "model.backbone.norm_eval=False", "optimizer.lr=0.02",
                "optimizer_config.grad_clip.max_norm=10", "lr_config.warmup_iters=15", "lr_config.warmup_ratio=0.1",
                "lr_config.step=[32]"]
SMALL = ["data.train.pipeline.2.img_scale=[(256,144)]", "data.test.pipeline.1.img_scale=(256,144)"]


@pytest.mark.slow   # 4-5 min: the fast suite keeps the short training runs, the demo and the AMP steps
def test_overfit_four_trashcan_images(tmp_path):
    full = json.loads((DATA / "annotations" / "instances_train_trashcan.json").read_text())
    imgs = [im for im in full["images"] if im["file_name"] in IMAGES]
    ids = {im["id"] for im in imgs}
    ann = tmp_path / "four.json"
    ann.write_text(json.dumps(dict(full, images=imgs, annotations=[a for a in full["annotations"]
                                                                    if a["image_id"] in ids])))
    assert len(imgs) == 4

    work = tmp_path / "work"
    train = [sys.executable, str(REPO / "train.py"), "--config", str(CONFIG), "--work-dir", str(work), "--seed", "0",
             "--cfg-options", f"data.train.ann_file={ann}", f"data.train.img_prefix={DATA}/train/",
             "data.imgs_per_gpu=4", "data.train.pipeline.3.flip_ratio=0.0", "total_epochs=40",
             "checkpoint_config.interval=20", "log_config.interval=1", *FROM_SCRATCH, *SMALL,
             # validation while training on the same 4 images (real labels): at epochs 20 and 40
             "evaluation.interval=20", "evaluation.save_best=auto", f"data.val.ann_file={ann}",
             f"data.val.img_prefix={DATA}/train/"]
    r = subprocess.run(train, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in work.glob("epoch_*.ckpt")) == ["epoch_20.ckpt", "epoch_40.ckpt"]

    rows = [json.loads(s) for s in (work / "log.json").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["mode"] == "train"]
    evals = [row for row in rows if row["mode"] == "val"]
    assert [row["epoch"] for row in evals] == [20, 40], evals
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)

    # the official tools/test_ins.py form: CONFIG CHECKPOINT positionally, --out, --eval
    val = [sys.executable, str(REPO / "valuation.py"), str(CONFIG), str(work / "epoch_40.ckpt"), "--out",
           str(tmp_path / "results.json"), "--eval", "segm", "bbox", "--ann", str(ann), "--img-prefix",
           f"{DATA}/train/", "--cfg-options", *SMALL]
    r = subprocess.run(val, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"segm AP ([\d.]+) AP50 ([\d.]+) \| bbox AP ([\d.]+) AP50 ([\d.]+)", r.stdout)
    assert m, r.stdout[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results
    # the validation row of epoch 40 is valuation.py's AP on epoch_40.ckpt
    from solov2.evaluation.coco_eval import evaluate_results, load_coco
    want = evaluate_results(load_coco(str(ann)), results)
    for t in ("segm", "bbox"):
        assert evals[1][f"{t}_mAP"] == pytest.approx(want[t]["AP"], abs=1e-6)
        assert evals[1][f"{t}_mAP_50"] == pytest.approx(want[t]["AP50"], abs=1e-6)
    best = 20 if evals[0]["segm_mAP"] >= evals[1]["segm_mAP"] else 40
    assert [p.name for p in work.glob("best_*.ckpt")] == [f"best_segm_mAP_epoch_{best}.ckpt"]
    segm_ap, segm_ap50 = float(m.group(1)), float(m.group(2))
    # random weights score 0.0; 7 checkpoints (4 runs) at 30-45 iterations: AP 0.24-0.61, AP50 0.38-0.75 (6 masks)
    assert segm_ap >= 0.2 and segm_ap50 >= 0.3, m.group(0)
