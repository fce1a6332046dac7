"""Validation while training (the config's `evaluation`) and exact resume: a `val` row per evaluation equal to
valuation.py on that epoch's snapshot, one inference compile per run, the best checkpoint, and the same weights,
history and best checkpoint after a resume."""
import json
import re

import mindspore as ms
import numpy as np
import pytest
from conftest import MINI, TRASHCAN_CFG, cli, run_train

from deploy.deploy_common import pseudo_ground_truth

SUFFIXES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")   # pycocotools' first 6 stats, in order


def val_settings(ann):
    """Validate every epoch on `ann` (4 val images) and keep the best segm_mAP; lr 0.01 from the first step, so
    that the reference weights move enough in 2 iterations for the two epochs' AP to differ."""
    return ["evaluation.interval=1", "evaluation.save_best=auto", f"data.val.ann_file={ann}",
            f"data.val.img_prefix={MINI}/val/", "optimizer.lr=0.0002", "lr_config.warmup=None"]


def val_rows(work):
    return [r for r in map(json.loads, (work / "log.json").read_text().splitlines()) if r.get("mode") == "val"]


def val_images_with_a_broken_one(ann, folder, index):
    """A copy of the val images of annotation file `ann` in `folder`, the `index`-th (file order) replaced by a
    regular file that is not an image: it passes the pre-training check and breaks during an evaluation.
    Returns its path."""
    folder.mkdir()
    images = json.loads(ann.read_text())["images"]
    for im in images:
        (folder / im["file_name"]).write_bytes((MINI / "val" / im["file_name"]).read_bytes())
    broken = folder / images[index]["file_name"]
    broken.write_bytes(b"not an image, yet a regular file that exists")
    return broken


def lost_row(epoch, step):
    """A train row of log.json as a run writes it, of training no snapshot kept (loss 9: told from the real)."""
    return dict(mode="train", epoch=epoch, iter=step, lr=0.01, loss=9.0, loss_ins=8.0, loss_cate=1.0, time=1.0,
                data_time=0.1)


def weights(path):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items() if "." in k}   # no counters


@pytest.fixture(scope="module")
def pseudo_val(ckpt, native_val_results, tmp_path_factory):
    """The first 4 val images, annotated with the reference weights' own instances (score >= 0.3): the weights
    being fine-tuned start near AP 1 and every update moves it (the TrashCan labels would give AP 0)."""
    path, gt = pseudo_ground_truth(native_val_results, 4, tmp_path_factory.mktemp("val") / "val4.json")
    assert len(gt["annotations"]) >= 8
    return path


def test_resume_gives_identical_weights_val_rows_and_best(tmp_path, ckpt, pseudo_val):
    """2 epochs straight == 1 epoch, stop, `--resume auto` for epoch 2: the weights, BN stats and optimizer state,
    and, validating every epoch, the val rows (each equal to valuation.py on that epoch's snapshot) and the best
    checkpoint."""
    more = val_settings(pseudo_val)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    r = run_train(straight, "--seed", "7", "--deterministic", "--load-from", str(ckpt), epochs=2, more=more)
    log = r.stdout + r.stderr
    rows = val_rows(straight)
    assert [(row["epoch"], row["iter"]) for row in rows] == [(1, 2), (2, 4)], rows
    assert set(rows[0]) == {"mode", "epoch", "iter"} | {f"{t}_{s}" for t in ("segm", "bbox") for s in SUFFIXES}
    # one inference graph for the run, however many evaluations
    assert re.findall(r"inference graphs compiled in this run: (\d+)", log) == ["1", "1"], log[-3000:]
    assert "per-class segm AP" in (straight / "train.log").read_text()

    # each row is valuation.py's AP on that epoch's snapshot (same weights, same code, float32)
    from solov2.evaluation.coco_eval import evaluate_results, load_coco
    coco = load_coco(str(pseudo_val))
    for row in rows:
        out = tmp_path / f"results_{row['epoch']}.json"
        v = cli("valuation.py", TRASHCAN_CFG, straight / f"epoch_{row['epoch']}.ckpt", "--ann", pseudo_val,
                "--img-prefix", MINI / "val", "--out", out)
        assert v.returncode == 0, v.stderr[-3000:]
        want = evaluate_results(coco, json.loads(out.read_text()))
        for t in ("segm", "bbox"):
            np.testing.assert_allclose([row[f"{t}_{s}"] for s in SUFFIXES], want[t]["stats"][:6], rtol=0,
                                       atol=1e-6, err_msg=f"epoch {row['epoch']} {t}")
    aps = [row["segm_mAP"] for row in rows]
    assert 0.05 < min(aps) and max(aps) < 1.0 and aps[0] != aps[1], aps    # non-trivial, moved by training

    # the best checkpoint: the epoch with the higher segm_mAP, holding that epoch's weights
    best_epoch = 1 + int(np.argmax(aps))
    assert sorted(p.name for p in straight.glob("best_*")) == [f"best_segm_mAP_epoch_{best_epoch}.ckpt"]
    best = weights(straight / f"best_segm_mAP_epoch_{best_epoch}.ckpt")
    snap = weights(straight / f"epoch_{best_epoch}.ckpt")
    assert best.keys() <= snap.keys() and len(best) > 100
    for k in best:
        np.testing.assert_array_equal(best[k], snap[k], err_msg=k)

    # a snapshot past the run's last epoch: one line, nothing trained
    r = run_train(straight, "--resume", "auto", epochs=1, check=False, more=more)
    assert r.returncode == 2 and "epoch_2.ckpt: saved after epoch 2, past this run's last (total_epochs 1)" in \
        r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]

    # 1 epoch, then --resume auto (with --keep-last 1, which never deletes the best checkpoint); the work dir
    # first holds the log of a run stopped before its first snapshot, and the resume follows a run that stopped
    # during epoch 2 after logging a step: log.json keeps one history (the rows no snapshot kept are dropped)
    resumed.mkdir()
    (resumed / "log.json").write_text(json.dumps(lost_row(epoch=1, step=1)) + "\n")
    run_train(resumed, "--seed", "7", "--deterministic", "--load-from", str(ckpt), epochs=1, more=more)
    assert sorted(p.name for p in resumed.glob("epoch_*.ckpt")) == ["epoch_1.ckpt"]
    with open(resumed / "log.json", "a") as f:
        f.write(json.dumps(lost_row(epoch=2, step=3)) + "\n")
    r = run_train(resumed, "--deterministic", "--resume", "auto", "--keep-last", "1", epochs=2, more=more)
    log = r.stdout + r.stderr
    assert f"resumed from {resumed / 'epoch_1.ckpt'} at epoch 1" in log, log[-3000:]
    assert f"best segm_mAP so far {aps[0]:.4f} (epoch 1)" in log, log[-3000:]
    a, b = ms.load_checkpoint(str(straight / "epoch_2.ckpt")), ms.load_checkpoint(str(resumed / "epoch_2.ckpt"))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy(), err_msg=k)
    # the run actually trained: epoch 2 differs from epoch 1
    e1 = snap if best_epoch == 1 else weights(straight / "epoch_1.ckpt")
    assert any(not np.array_equal(e1[k], a[k].asnumpy()) for k in e1 if k.startswith("bbox_head."))
    assert val_rows(resumed) == rows
    assert sorted(p.name for p in resumed.glob("*.ckpt")) == sorted(
        {f"best_segm_mAP_epoch_{best_epoch}.ckpt", "epoch_2.ckpt"})
    again = weights(resumed / f"best_segm_mAP_epoch_{best_epoch}.ckpt")
    for k in best:
        np.testing.assert_array_equal(again[k], best[k], err_msg=k)
    # logs, loss curve and snapshot bookkeeping
    rows = [json.loads(s) for s in (resumed / "log.json").read_text().splitlines()]
    assert [row["iter"] for row in rows if row["mode"] == "train"] == [1, 2, 3, 4]
    assert 9.0 not in [row["loss"] for row in rows if row["mode"] == "train"]
    assert "log.json: dropped 1 row(s) after step 2" in log, log[-3000:]
    assert (resumed / "loss_curve.png").stat().st_size > 1000
    assert not list(resumed.glob(".*tmp*"))
    # the work dir records the resolved config and the command line; a resume lists what changed since
    record = json.loads((resumed / "run.json").read_text())
    assert record["config"]["optim"]["total_epochs"] == 2 and "--resume" in record["argv"]
    assert "1 setting(s) changed" in log and "optim.total_epochs: 1 -> 2" in log
    r = run_train(resumed, "--resume", "auto", epochs=3, check=False,
                  more=more + ["model.bbox_head.seg_feat_channels=64"])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "parameter shape(s) differ" in r.stderr and "head.seg_feat_channels: 256 -> 64" in r.stderr, r.stderr


def test_no_validate_and_a_missing_validation_set(tmp_path, pseudo_val):
    """--no-validate trains as without an evaluation section; a missing validation image is an error before the
    first training step (no snapshot, no log row), naming the file; one that breaks during an evaluation ends the
    run naming it, after the epoch's training is saved (checkpoint interval 5: saved for the failure only), and a
    resume makes up that evaluation first."""
    more = val_settings(pseudo_val)
    r = run_train(tmp_path / "off", "--no-validate", epochs=1, images=2, more=more)
    assert not val_rows(tmp_path / "off") and "validation" not in r.stdout + r.stderr
    r = run_train(tmp_path / "bad", epochs=1, images=2, check=False, more=more + ["data.val.img_prefix=/nonexistent/"])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert re.search(r"error: /nonexistent/vid_\S+\.jpg: no such image \(data\.val\.img_prefix", r.stderr), r.stderr
    assert not (tmp_path / "bad" / "log.json").exists() and not list((tmp_path / "bad").glob("*.ckpt"))
    images = tmp_path / "val"
    broken = val_images_with_a_broken_one(pseudo_val, images, -1)
    r = run_train(tmp_path / "late", epochs=2, images=2, check=False,
                  more=more + [f"data.val.img_prefix={images}/", "checkpoint_config.interval=5"])
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and broken.name in errors[0], r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "late").glob("*.ckpt")) == ["epoch_1.ckpt"]
    assert "its evaluation did not complete" in (tmp_path / "late" / "train.log").read_text()
    # the image mended, --resume auto first makes up epoch 1's evaluation, then trains and evaluates epoch 2
    broken.write_bytes((MINI / "val" / broken.name).read_bytes())
    r = run_train(tmp_path / "late", "--resume", "auto", epochs=2, images=2,
                  more=more + [f"data.val.img_prefix={images}/", "checkpoint_config.interval=5"])
    assert "epoch 1: evaluating it first" in r.stdout + r.stderr, r.stderr[-3000:]
    assert [row["epoch"] for row in val_rows(tmp_path / "late")] == [1, 2]


def test_an_evaluation_counts_as_done_only_once_its_best_checkpoint_is_written(tmp_path, monkeypatch):
    """Stopped (Ctrl-C, a full disk) while the best checkpoint is written, an evaluation must leave no `val` row:
    the resume then makes it up (`evaluated_epochs`) instead of skipping it and never writing that best."""
    from types import SimpleNamespace

    from solov2.engine import validation
    from solov2.engine.logger import Logger
    stats = [0.5] + [0.1] * 11
    metrics = {"segm": dict(stats=stats, AP=0.5, AP50=0.6, summary="...", per_class=[])}

    class Validator:   # what _evaluate_and_keep reads of one
        world, num_images, compiled_graphs = 1, 2, 1
        cfg = SimpleNamespace(evaluation=SimpleNamespace(save_best="segm_mAP"))

        def __call__(self, net, epoch):
            return metrics, 1.0
    validator = Validator()

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(validation, "keep_best", interrupted)
    with pytest.raises(KeyboardInterrupt):
        validation._evaluate_and_keep(validator, None, log=Logger(tmp_path, True), work=tmp_path, epoch=3,
                                      global_step=30, best=None)
    assert validation.evaluated_epochs(tmp_path) == set()
    monkeypatch.setattr(validation, "keep_best", lambda work, net, key, row, best: (row[key], 3))
    assert validation._evaluate_and_keep(validator, None, log=Logger(tmp_path, True), work=tmp_path, epoch=3,
                                         global_step=30, best=None) == (0.5, 3)
    assert validation.evaluated_epochs(tmp_path) == {3}


def test_a_made_up_evaluations_best_survives_a_second_resume(tmp_path):
    """Epoch 3's snapshot says best 0.40 (epoch 2); its evaluation, made up after a resume, reached 0.50 and wrote
    best_segm_mAP_epoch_3.ckpt. Interrupted again before epoch 4 was saved, the next resume must start from 0.50
    (epoch 3), not the snapshot's 0.40, or a 0.45 at epoch 4 would replace the real best. Rows after the snapshot's
    epoch (a branch that was not saved) do not count; a tie keeps the earlier epoch."""
    from solov2.engine.validation import best_with_made_up
    rows = [dict(mode="train", epoch=1, iter=5, loss=1.0), dict(mode="val", epoch=1, segm_mAP=0.3),
            dict(mode="val", epoch=2, segm_mAP=0.4), dict(mode="val", epoch=3, segm_mAP=0.5),
            dict(mode="val", epoch=4, segm_mAP=0.9)]
    (tmp_path / "log.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert best_with_made_up(tmp_path, "segm_mAP", 3, (0.4, 2)) == (0.5, 3)
    assert best_with_made_up(tmp_path, "segm_mAP", 2, (0.4, 2)) == (0.4, 2)
    assert best_with_made_up(tmp_path, "segm_mAP", 3, None) == (0.5, 3)
    assert best_with_made_up(tmp_path, "segm_mAP", 3, (0.5, 2)) == (0.5, 2)
    assert best_with_made_up(tmp_path, None, 3, None) is None
    assert best_with_made_up(tmp_path / "nowhere", "segm_mAP", 3, (0.4, 2)) == (0.4, 2)
