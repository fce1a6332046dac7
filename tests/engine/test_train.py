"""Training: the full objective vs the official losses, exact resume, and a short run that learns."""
import json
import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from conftest import NORM, REF, REPO, SHARED, run_train

from solov2.data.coco import CocoDataset
from solov2.data.train_transforms import collate, train_transform
from solov2.engine.optim import lr_schedule
from solov2.engine.train_step import make_loss_fn, to_tensors
from solov2.errors import SolovError

DATA = SHARED / "datasets" / "trashcan_mini"
TRASHCAN_R18 = REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x_trashcan.py"


def test_objective_matches_official_losses(reference_net, ms_mode):
    """Model + targets + losses on the official training batch (same 2 images, scale (768, 448), no flip)."""
    from conftest import reference_config
    cfg = reference_config()
    ds = CocoDataset(DATA / "annotations" / "instances_train_trashcan.json", DATA / "train")
    names = ("vid_000054_frame0000035.jpg", "vid_000434_frame0000024.jpg")
    idx = [next(i for i, r in enumerate(ds.records) if r["filename"].endswith(n)) for n in names]
    samples = [train_transform(ds[i], np.random.RandomState(0), scales=[(768, 448)], flip_ratio=0.0, **NORM) for i in idx]
    batch = collate(samples, scale_ranges=cfg.head.scale_ranges, num_grids=cfg.head.num_grids, sigma=cfg.head.sigma,
                    max_pos=128)
    ref = np.load(REF / "train_trashcan_batch2.npz")
    np.testing.assert_array_equal(batch["img"], ref["img"])
    reference_net.set_train(True)
    try:
        loss_fn = make_loss_fn(reference_net, cfg.head)
        if ms_mode == "graph":
            loss_fn = ms.jit(loss_fn)
        loss, loss_ins, loss_cate = (float(t.asnumpy()) for t in loss_fn(*to_tensors(batch)))
    finally:
        reference_net.set_train(False)
    assert loss_ins == pytest.approx(float(ref["loss_ins"]), rel=1e-5)     # 2.8279218673706055
    assert loss_cate == pytest.approx(float(ref["loss_cate"]), rel=1e-5)   # 8.857595443725586
    assert loss == pytest.approx(float(ref["loss_total"]), rel=1e-5)


def test_train_step_is_one_sgd_update(ms_mode):
    """make_train_step (the loop's step: loss, grads, clip, SGD with momentum and weight decay) in both modes,
    against the update written out by hand from value_and_grad of the same objective. No warmup and a large weight
    decay, so that the step and its weight-decay part are far above the float32 rounding of the weights."""
    from conftest import load_reference_weights
    from solov2.config import load_config
    from solov2.engine.optim import lr_schedule, make_optimizer
    from solov2.engine.train_step import make_train_step
    from solov2.models.solov2 import build_model
    cfg = load_config(TRASHCAN_R18, ["lr_config.warmup=None", "optimizer.weight_decay=0.05"])
    ds = CocoDataset(DATA / "annotations" / "instances_train_trashcan.json", DATA / "train", max_images=1)
    sample = train_transform(ds[0], np.random.RandomState(0), scales=[(256, 160)], flip_ratio=0.0, **NORM)
    batch = to_tensors(collate([sample], scale_ranges=cfg.head.scale_ranges, num_grids=cfg.head.num_grids,
                               sigma=cfg.head.sigma, max_pos=128))
    net = build_model(cfg)                       # a fresh copy: the step changes the weights
    load_reference_weights(net)
    net.set_train(True)
    opt = make_optimizer(net, cfg.optim, iters_per_epoch=2, total_epochs=1)   # two steps at lr 0.01
    before = {p.name: p.asnumpy().copy() for p in opt.parameters}
    grad_fn = ms.value_and_grad(make_loss_fn(net, cfg.head), None, opt.parameters, has_aux=True)
    (want_loss, _, _), grads = grad_fn(*batch)
    grads = [g.asnumpy().astype(np.float64) for g in grads]
    norm = np.sqrt(sum((g ** 2).sum() for g in grads))
    clip = min(1.0, cfg.optim.grad_clip / norm)   # clip_by_global_norm
    lr = lr_schedule(cfg.optim, 1, 1)[0]
    train_step = make_train_step(net, opt, head=cfg.head, grad_clip=cfg.optim.grad_clip, world=1,
                                 jit=ms_mode == "graph")
    loss, _, _, finite = train_step(*batch)
    assert bool(finite.asnumpy())                 # no loss scaler: every update is applied
    assert float(loss.asnumpy()) == pytest.approx(float(want_loss.asnumpy()), rel=1e-5)
    assert int(opt.global_step.asnumpy().reshape(-1)[0]) == 1
    assert lr == cfg.optim.lr == 0.01 and cfg.optim.weight_decay == 0.05
    moved, without_decay, velocity = 0, 0, {}
    for p, g in zip(opt.parameters, grads):
        w0 = before[p.name].astype(np.float64)
        step = p.asnumpy().astype(np.float64) - w0
        decay = cfg.optim.weight_decay * w0
        # first momentum step: v = g + wd * w, w -= lr * v. The jitted step's gradient differs from value_and_grad's
        # by float32 reduction-order noise (GRAPH kernels vs PYNATIVE), far below 1e-4 of the tensor's largest step
        # (as in the 2-worker test); the weight is stored in float32 (1 ulp).
        want_step = -lr * (clip * g + decay)
        velocity[p.name] = clip * g + decay
        tol = 1e-4 * np.abs(want_step).max() + np.spacing(np.abs(before[p.name]))
        err = np.abs(step - want_step)
        assert (err <= tol).all(), (p.name, float((err / tol).max()))
        without_decay += int((np.abs(step + lr * clip * g) > tol).any())   # the check sees the weight decay
        moved += not np.array_equal(p.asnumpy(), before[p.name])
    assert moved == len(grads) and without_decay > len(grads) // 2

    # The second step carries the momentum: v2 = m v1 + clip2 g2 + wd w1, w2 = w1 - lr v2 (torch's SGD; the first
    # step alone is the same with any momentum). v1 is known to the first step's tolerance (scaled by m and lr).
    w1 = {p.name: p.asnumpy().copy() for p in opt.parameters}
    (_, _, _), grads2 = grad_fn(*batch)
    grads2 = [g.asnumpy().astype(np.float64) for g in grads2]
    clip2 = min(1.0, cfg.optim.grad_clip / np.sqrt(sum((g ** 2).sum() for g in grads2)))
    train_step(*batch)
    m, without_momentum = cfg.optim.momentum, 0
    assert m == 0.9
    for p, g in zip(opt.parameters, grads2):
        w = w1[p.name].astype(np.float64)
        fresh = clip2 * g + cfg.optim.weight_decay * w
        want_step = -lr * (m * velocity[p.name] + fresh)
        step = p.asnumpy().astype(np.float64) - w
        tol = (1e-4 * (np.abs(want_step).max() + m * lr * np.abs(velocity[p.name]).max())
               + np.spacing(np.abs(w1[p.name])))
        assert (np.abs(step - want_step) <= tol).all(), (p.name, float((np.abs(step - want_step) / tol).max()))
        without_momentum += int((np.abs(step + lr * fresh) > tol).any())   # the check sees the momentum
    assert without_momentum > len(grads2) // 2


def test_lr_schedule_warmup_and_steps():
    from solov2.config import OptimConfig
    lrs = lr_schedule(OptimConfig(lr=0.01, warmup_iters=500, warmup_ratio=0.01, lr_steps=(27, 33)), 100, 36)
    assert len(lrs) == 3600
    assert lrs[0] == pytest.approx(0.0001)                       # ratio 0.01 at iteration 0
    assert lrs[250] == pytest.approx(0.01 * (1 - 0.5 * 0.99))    # linear warmup
    assert lrs[500] == pytest.approx(0.01) and lrs[2699] == pytest.approx(0.01)
    assert lrs[2700] == pytest.approx(0.001) and lrs[3300] == pytest.approx(0.0001)


def test_amp_resume_gives_identical_weights_and_loss_scale(tmp_path):
    """--amp O2 with a dynamic scale that doubles after 3 finite steps: 2 epochs straight (4 steps) == its epoch-1
    snapshot resumed (`--resume PATH`, into another work dir) for epoch 2, bitwise, the scaler's value and its
    counter included (restarting the scaler from its initial state would give 1024 instead of 2048 at the end).
    `--resume auto` after a run of fewer epochs: tests/engine/test_validation.py."""
    amp = ["fp16.loss_scale={'init_scale': 1024., 'scale_window': 3}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    r = run_train(straight, "--seed", "7", "--deterministic", "--amp", "O2", epochs=2, more=amp)
    assert "amp O2, dynamic loss scale 1024" in r.stdout + r.stderr
    assert "[2][1/2] loss scale 1024 -> 2048" in r.stdout + r.stderr         # the 3rd step, the 1st of epoch 2
    r = run_train(resumed, "--deterministic", "--amp", "O2", "--resume", straight / "epoch_1.ckpt", epochs=2,
                  more=amp)
    assert "resumed from" in r.stdout + r.stderr and "warning" not in r.stdout + r.stderr, r.stdout + r.stderr
    a, b = ms.load_checkpoint(str(straight / "epoch_2.ckpt")), ms.load_checkpoint(str(resumed / "epoch_2.ckpt"))
    assert sorted(a) == sorted(b) and {"loss_scale.scale_value", "loss_scale.counter"} <= set(a)
    for k in a:
        np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy(), err_msg=k)
    assert float(a["loss_scale.scale_value"].asnumpy()) == 2048.0 and int(a["loss_scale.counter"].asnumpy()) == 1
    assert not (resumed / "epoch_1.ckpt").exists()
    e1 = ms.load_checkpoint(str(straight / "epoch_1.ckpt"))
    assert float(e1["loss_scale.scale_value"].asnumpy()) == 1024.0 and int(e1["loss_scale.counter"].asnumpy()) == 2
    rows = [json.loads(s) for s in (straight / "log.json").read_text().splitlines()]
    assert [row["loss_scale"] for row in rows] == [1024.0, 1024.0, 2048.0, 2048.0]
    assert all(np.isfinite(row["loss"]) for row in rows)


def test_a_new_run_over_an_earlier_one_needs_force(tmp_path, one_epoch_run):
    """A new run (no --resume) in a work dir an earlier run left checkpoints in would have its first snapshot
    pruned as older than the earlier run's (epoch_1 < epoch_36) and replace its best checkpoint: refused in one
    line, nothing touched; --force deletes the earlier run's checkpoints and logs (only those) and starts afresh."""
    work = one_epoch_run(tmp_path / "work")
    (work / "epoch_1.ckpt").rename(work / "epoch_36.ckpt")   # as if the earlier run had gone to epoch 36
    (work / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    r = run_train(work, "--mode", "pynative", epochs=1, images=2, check=False)
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"{work}: --work-dir holds an earlier run's checkpoints (epoch_36.ckpt): --resume auto" in errors[0]
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == before
    # --force deletes the earlier run only once the new one has its initial weights: an unreadable --load-from
    # leaves both runs' worth of nothing lost
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint" * 64)
    r = run_train(work, "--mode", "pynative", "--force", "--load-from", tmp_path / "corrupt.ckpt", epochs=1,
                  images=2, check=False)
    assert r.returncode == 2 and "corrupt.ckpt" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == before
    r = run_train(work, "--mode", "pynative", "--force", epochs=1, images=2)
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == [
        "epoch_1.ckpt", "log.json", "loss_curve.png", "notes.txt", "run.json", "train.log"]
    log = (work / "train.log").read_text()
    assert log.count("SOLOv2 fine-tuning:") == 1   # the new run's log only
    # the config's model.pretrained is not downloaded: with no --load-from, the log says the weights are random
    assert "warning: model.pretrained 'torchvision://resnet18' is not loaded" in log, log
    assert len((work / "log.json").read_text().splitlines()) == 1                # its one step
    # --force never turns into a resume (train_multi.py resumes by default)
    r = run_train(work, "--mode", "pynative", "--force", "--resume", "auto", epochs=1, images=2, check=False)
    assert r.returncode == 2 and "--force starts a new run, but --resume auto found" in r.stderr, r.stderr[-3000:]
    # logs alone (a run stopped before its first snapshot) are no earlier run: relaunched, it starts again
    (work / "epoch_1.ckpt").unlink()
    run_train(work, "--mode", "pynative", epochs=1, images=2)
    assert (work / "epoch_1.ckpt").is_file()
    from solov2.engine.workdir import check_new_run
    assert check_new_run(tmp_path / "nowhere", resume=None, force=False) == []


def test_which_files_are_an_earlier_runs_checkpoints(tmp_path):
    """epoch_N.ckpt and keep_best's best_<key>_epoch_N.ckpt count (any key; the first 4 named, then how many
    more); a user's copies beside them do not."""
    from solov2.engine.workdir import check_new_run
    from solov2.engine.validation import best_path
    mine = ["epoch_1.ckpt", "epoch_2.ckpt", "epoch_10.ckpt", "notes.ckpt", "best_segm_mAP.ckpt", "epoch_1.ckpt.bak",
            "best_segm_mAP_epoch_x.ckpt", "my_best_bbox_mAP_epoch_3.ckpt"]
    for name in mine + [best_path(tmp_path, "segm_mAP", 2).name, best_path(tmp_path, "bbox_mAP_50", 10).name]:
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(SolovError) as e:
        check_new_run(tmp_path, resume=None, force=False)
    assert ("checkpoints (best_bbox_mAP_50_epoch_10.ckpt, best_segm_mAP_epoch_2.ckpt, epoch_1.ckpt, epoch_10.ckpt "
            "(+1 more))") in str(e.value)
    assert {p.name for p in check_new_run(tmp_path, resume=None, force=True)} == {
        "best_bbox_mAP_50_epoch_10.ckpt", "best_segm_mAP_epoch_2.ckpt", "epoch_1.ckpt", "epoch_10.ckpt",
        "epoch_2.ckpt"}


def test_resuming_with_another_number_of_steps_per_epoch_is_refused(tmp_path, one_epoch_run):
    """The learning rate is looked up by global step: a snapshot of 1 step per epoch resumed with 2 per epoch
    (more images; on msrun, fewer devices) would run epoch 2 at epoch 3's rate, or past the schedule's end."""
    work = one_epoch_run(tmp_path / "work")
    r = run_train(work, "--mode", "pynative", "--resume", "auto", epochs=2, images=4, check=False)
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "epoch_1.ckpt: saved after 1 steps in 1 epoch(s), but this run has 2 steps per epoch" in errors[0]
    assert not (work / "epoch_2.ckpt").exists()
    # the config's resume_from (mmdetection's way to resume) is not silently ignored: one flag decides
    r = run_train(work, "--mode", "pynative", epochs=2, images=4, check=False,
                  more=[f"resume_from={work / 'epoch_1.ckpt'}"])
    assert r.returncode == 2 and "is not read by this port: resume with --resume PATH" in r.stderr, r.stderr[-3000:]


def test_resuming_a_snapshot_over_checkpoints_it_does_not_own_is_refused(tmp_path, one_epoch_run):
    """--resume PATH where the work dir holds a later epoch's snapshot (an abandoned continuation) or, for a
    snapshot from another folder, any other run's: the resumed run would prune them, and a later --resume auto
    would continue them instead of it. One line naming them; nothing touched."""
    work = one_epoch_run(tmp_path / "work")
    shutil.copy(work / "epoch_1.ckpt", work / "epoch_5.ckpt")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(work / "epoch_1.ckpt", other / "epoch_3.ckpt")
    for where, text in ((work, "holds checkpoints of later epochs than 1 (epoch_5.ckpt)"),
                        (other, "holds checkpoints of another run (epoch_3.ckpt)")):
        before = {p.name: p.read_bytes() for p in where.iterdir() if p.is_file()}
        r = run_train(where, "--mode", "pynative", "--resume", work / "epoch_1.ckpt", epochs=2, images=2, check=False)
        errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert text in errors[0], errors[0]
        assert {p.name: p.read_bytes() for p in where.iterdir() if p.is_file()} == before


def test_bad_training_inputs_fail_cleanly(tmp_path):
    r = run_train(tmp_path / "w", "--resume", str(tmp_path / "nope.ckpt"), check=False)
    assert r.returncode == 2 and "nope.ckpt: no such snapshot" in r.stderr and "Traceback" not in r.stderr
    # the official form: CONFIG positionally
    cmd = [sys.executable, str(REPO / "train.py"), str(REPO / "configs/solov2/solov2_light_448_r18_fpn_8gpu_3x.py"),
           "--work-dir", str(tmp_path / "w2"), "--cfg-options",
           f"data.train.ann_file={DATA}/annotations/instances_train_trashcan.json", f"data.train.img_prefix={DATA}/train/"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "22 categories" in r.stderr and "num_classes=23" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_weight_decay_reaches_every_trainable_parameter():
    """Official: SGD weight decay on all parameters; MindSpore's default skips names with gamma/beta."""
    from conftest import reference_config
    from solov2.models.solov2 import build_model
    from solov2.engine.optim import make_optimizer
    cfg = reference_config()
    net = build_model(cfg)
    opt = make_optimizer(net, cfg.optim, 10, 1)
    assert len(opt.parameters) == len(net.trainable_params()) and all(opt.decay_flags)
    assert any("gn.gamma" in p.name for p in opt.parameters) and any("bn2.beta" in p.name for p in opt.parameters)


def test_load_from_coco_checkpoint_reinitialises_the_class_layer(tmp_path):
    """Fine-tuning an 80-class checkpoint to 22 classes: solo_cate is re-initialised (and logged), the rest loads."""
    from solov2.config import load_config
    from solov2.models.solov2 import build_model
    ms.set_seed(123)
    coco = build_model(load_config(REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x.py"))
    ms.save_checkpoint(coco, str(tmp_path / "coco.ckpt"))
    r = run_train(tmp_path / "w", "--load-from", str(tmp_path / "coco.ckpt"), "--seed", "1", epochs=1, images=2)
    log = r.stdout + r.stderr
    assert "re-initialised 2 parameter(s) whose shape differs: bbox_head.solo_cate.weight, bbox_head.solo_cate.bias" \
        in log
    got = ms.load_checkpoint(str(tmp_path / "w" / "epoch_1.ckpt"))
    src = {p.name: p.asnumpy() for p in coco.get_parameters()}
    assert got["bbox_head.solo_cate.weight"].shape == (22, 256, 3, 3)
    for frozen in ("backbone.conv1.weight", "backbone.layer1.0.conv1.weight", "backbone.layer3.1.bn2.moving_mean"):
        np.testing.assert_array_equal(got[frozen].asnumpy(), src[frozen])   # loaded, and frozen in training


def test_short_deformable_training_run(tmp_path):
    """Fine-tuning the light-512 DCN R50 TrashCan config (DCNv1 in res3-res5 and in the last tower convs): the
    offsets start at zero (mmcv) and must learn, i.e. the gradients reach conv_offset through the sampling."""
    cfg = REPO / "configs" / "solov2" / "solov2_light_512_dcn_r50_fpn_8gpu_3x_trashcan.py"
    run_train(tmp_path / "w", "--seed", "3", epochs=2, images=2, config=cfg,
                  more=["optimizer.lr=0.002", "lr_config.warmup_iters=1"])
    rows = [json.loads(s) for s in (tmp_path / "w" / "log.json").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(row["loss"]) for row in rows), rows
    got = ms.load_checkpoint(str(tmp_path / "w" / "epoch_2.ckpt"))
    offsets = [k for k in got if k.endswith("conv_offset.weight") and k.startswith(("backbone.", "bbox_head."))]
    assert len(offsets) == (4 + 6 + 3) + 2, offsets                    # backbone res3-res5 blocks + 2 tower convs
    for k in ("backbone.layer3.0.conv2.conv_offset.weight", "bbox_head.kernel_convs.2.conv.conv_offset.weight"):
        assert np.abs(got[k].asnumpy()).max() > 0, k                   # moved away from its zero init
    assert "bbox_head.kernel_convs.1.conv.conv_offset.weight" not in got  # SOLOv2LightHead: the last conv only


def test_resuming_a_finished_run_trains_nothing(tmp_path, one_epoch_run):
    """--resume auto of a run whose last epoch is saved (a finished msrun job launched again, here with another lr):
    exit 0, a line saying there is nothing to train, the snapshot and run.json untouched (a snapshot past
    total_epochs is refused: test_validation)."""
    work = one_epoch_run(tmp_path / "work")
    before = {name: (work / name).read_bytes() for name in ("epoch_1.ckpt", "run.json")}
    r = run_train(work, "--mode", "pynative", "--resume", "auto", epochs=1, images=2, more=["optimizer.lr=0.5"])
    assert "nothing to train: epoch_1.ckpt ended epoch 1, the last" in r.stdout + r.stderr, r.stderr[-3000:]
    # run.json stays the record of the run that trained (a later resume compares its settings with it)
    assert {name: (work / name).read_bytes() for name in before} == before and not (work / "epoch_2.ckpt").exists()
