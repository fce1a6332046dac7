"""Data-parallel fine-tuning for real: msrun_launcher.sh starts train_multi.py with 2 CPU workers (MCCL)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mindspore as ms
import mindspore.ops as ops
import numpy as np
import pytest
from conftest import FAILING_JOB_ENV, REPO, SHARED, cli, in_mode

from solov2.config import load_config
from solov2.data.coco import CocoDataset
from solov2.data.loader import TrainLoader
from solov2.models.solov2 import build_model
from solov2.checkpoint import load_weights
from solov2.engine.train_step import make_loss_fn, to_tensors
from solov2.engine.optim import make_optimizer
from solov2.engine.amp import mixed_precision

DATA = SHARED / "datasets" / "trashcan_mini"
CFG = REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x_trashcan.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 2-image annotation file and one initial checkpoint that every rank (and the reference) loads."""
    d = tmp_path_factory.mktemp("dist")
    coco = json.loads((DATA / "annotations" / "instances_train_trashcan.json").read_text())
    with_anns = {a["image_id"] for a in coco["annotations"]}
    keep = [im["id"] for im in coco["images"] if im["id"] in with_anns][:2]
    coco["images"] = [im for im in coco["images"] if im["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    (d / "two.json").write_text(json.dumps(coco))
    ms.set_seed(0)
    ms.save_checkpoint(build_model(load_config(CFG)), str(d / "init.ckpt"))
    overrides = [f"data.train.ann_file={d / 'two.json'}", f"data.train.img_prefix={DATA}/train/",
                 "data.imgs_per_gpu=1", "data.train.pipeline.2.img_scale=[(256,160)]", "log_config.interval=1",
                 "optimizer.lr=0.05", "lr_config.warmup=None"]
    return d, overrides


AMP = ["amp_level=O2", "fp16.loss_scale=1024."]     # static: the same scale in this process's reference


def launch(setup, work, epochs, log_dir, wait=True, flags="", more=(), init=None, fails=False):
    """msrun_launcher.sh with 2 workers of train_multi.py; fails: the job is meant to fail (FAILING_JOB_ENV)."""
    d, overrides = setup
    cmd = (f"train_multi.py --config {CFG} --work-dir {work} --seed 5 --load-from {init or d / 'init.ckpt'} "
           f"{flags} "
           f"--cfg-options {' '.join(overrides + list(more))} total_epochs={epochs}")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               **(FAILING_JOB_ENV if fails else {}))
    args = ["bash", str(REPO / "msrun_launcher.sh"), cmd, "2", "2", "127.0.0.1", str(free_port()), "0",
            str(log_dir), "True", "60"]
    if not wait:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def reference_step(setup, more=()):
    """One SGD step in this process with the mean of the two ranks' gradients (official DDP semantics:
    each device normalises its own loss, gradients are averaged). With AMP (`more` = AMP): the float16 network,
    each rank's loss scaled, the mean of the scaled gradients unscaled."""
    d, overrides = setup
    cfg = load_config(CFG, overrides + list(more) + ["total_epochs=1"])
    net = build_model(cfg)
    load_weights(net, d / "init.ckpt")
    net.set_train(True)
    ds = CocoDataset(cfg.data.train_ann_file, cfg.data.train_img_prefix)
    opt = make_optimizer(net, cfg.optim, 1, 1)
    loss_fn = make_loss_fn(mixed_precision(net, cfg.amp.level), cfg.head)
    scale = cfg.amp.init_scale if cfg.amp.loss_scale else 1.0

    def scaled(*batch):
        loss, loss_ins, loss_cate = loss_fn(*batch)
        return loss * scale, loss_ins, loss_cate
    grad_fn = ms.value_and_grad(scaled, None, opt.parameters, has_aux=True)
    grads, losses = [], []
    for rank in range(2):
        batch = next(TrainLoader(ds, cfg, seed=5, world=2, rank=rank, workers=1).epoch(0))
        (scaled_loss, _, _), grad = grad_fn(*to_tensors(batch))
        grads.append(grad)
        losses.append(float(scaled_loss.asnumpy()) / scale)
    mean = tuple((a + b) / 2 / scale for a, b in zip(*grads))
    assert all(np.isfinite(g.asnumpy()).all() for g in mean)
    opt(ops.clip_by_global_norm(mean, cfg.optim.grad_clip))
    return ({p.name: p.asnumpy() for p in net.get_parameters()}, {p.name for p in net.trainable_params()},
            losses)


def test_two_workers_average_gradients_and_snapshot(setup, tmp_path):
    work = tmp_path / "work"
    r = launch(setup, work, 1, tmp_path / "logs1")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "Logs:" in r.stdout + r.stderr
    assert sorted(p.name for p in work.glob("*.ckpt")) == ["epoch_1.ckpt"]   # rank 0 writes, once
    log0 = (tmp_path / "logs1" / "worker_0.log").read_text()
    assert "2 device(s) x 1 images, 1 iterations/epoch" in log0

    # one step of 2-worker data parallelism == this process's step with the mean gradient
    with in_mode("pynative"):
        expected, trainable, losses = reference_step(setup)
    # the logged loss is the mean over the ranks (mmdet's parse_losses), not rank 0's own; float32 noise of the
    # two modes' reduction orders is far below the 1e-4 relative allowed (the two ranks' losses differ by more)
    logged = json.loads((work / "log.json").read_text().splitlines()[0])["loss"]
    assert abs(logged - np.mean(losses)) <= 1e-4 * abs(np.mean(losses)), (logged, losses)
    assert abs(losses[0] - losses[1]) > 1e-3 * abs(np.mean(losses)), losses   # else the check could not fail
    got = ms.load_checkpoint(str(work / "epoch_1.ckpt"))
    init = ms.load_checkpoint(str(setup[0] / "init.ckpt"))
    moved, worst = set(), 0.0
    for name, want in expected.items():
        # The steps (not the weights, which hide a small step) agree to float32 noise: the gradient's reduction
        # order differs (two workers' AllReduce, GRAPH kernels vs one process, PYNATIVE), far below 1e-4 of the
        # tensor's largest step; both weights are rounded to float32 (half an ulp each).
        w0 = init[name].asnumpy().astype(np.float64)
        step, want_step = got[name].asnumpy() - w0, want - w0
        tol = 1e-4 * np.abs(want_step).max() + np.spacing(np.maximum(np.abs(got[name].asnumpy()), np.abs(want)))
        assert (np.abs(step - want_step) <= tol).all(), (name, float((np.abs(step - want_step) / tol).max()))
        worst = max(worst, float((np.abs(step - want_step) / tol).max()))
        if not np.array_equal(got[name].asnumpy(), init[name].asnumpy()):
            moved.add(name)
    print(f"worst step difference / tolerance: {worst:.3g}")
    # Frozen tensors did not move; every trainable one did (weight decay reaches BN/GN gamma and beta too),
    # except tensors that are 0 with a 0 gradient: the bn1 betas behind a zero-initialised residual gamma.
    assert moved <= trainable, sorted(moved - trainable)
    still = trainable - moved
    assert all(not init[n].asnumpy().any() for n in still), sorted(still)
    assert len(still) <= 6 and len(moved) > 80

    # relaunching continues from the newest snapshot: test_two_workers_validate_as_one_process


def test_two_workers_with_amp_agree_with_one_process(setup, tmp_path):
    """--amp O2 under msrun: the all-reduced scaled float16 gradients, unscaled, give the update of one process
    on the combined batch (to float16 rounding of the reduction order)."""
    work = tmp_path / "work"
    r = launch(setup, work, 1, tmp_path / "logs", flags="--amp O2", more=["fp16.loss_scale=1024."])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    log0 = (tmp_path / "logs" / "worker_0.log").read_text()
    assert "amp O2, static loss scale 1024" in log0 and "update skipped" not in log0
    with in_mode("pynative"):
        expected, _, _ = reference_step(setup, AMP)
    got = ms.load_checkpoint(str(work / "epoch_1.ckpt"))
    init = ms.load_checkpoint(str(setup[0] / "init.ckpt"))
    assert float(got["loss_scale.scale_value"].asnumpy()) == 1024.0
    # float16 kernels round differently in the workers' GRAPH mode and this PYNATIVE reference, so compare the
    # updates: each parameter's step within 3% (norm) of the reference step (measured: at most 0.9%)
    errors = {}
    for name, want in expected.items():
        step_want = want.astype(np.float64) - init[name].asnumpy()
        step_got = got[name].asnumpy().astype(np.float64) - init[name].asnumpy()
        if np.abs(step_want).max() > 0:
            errors[name] = np.linalg.norm(step_got - step_want) / np.linalg.norm(step_want)
    assert len(errors) > 80 and max(errors.values()) < 0.03, sorted(errors.items(), key=lambda kv: -kv[1])[:5]


def test_two_workers_validate_as_one_process(setup, tmp_path, ckpt, native_val_results):
    """Validation under msrun: each rank predicts 2 of the 4 images, rank 0 gathers and evaluates them, and every
    rank leaves together. A broken image in rank 1's shard ends both ranks, rank 1 naming the file and rank 0
    naming rank 1, with epoch 1 saved; mended, the relaunched job first makes up epoch 1's evaluation, then trains
    and evaluates epoch 2. Rank 0 keeps the best checkpoint, and epoch 2's val row equals valuation.py (one process)
    on its snapshot (an image predicted twice or not at all would change the AP). With norm_eval False each rank's
    BatchNorm statistics follow its own image in epoch 2: rank 1 must predict with rank 0's, those of the
    snapshot."""
    from deploy.deploy_common import pseudo_ground_truth
    from engine.test_validation import SUFFIXES, val_images_with_a_broken_one, val_rows, val_settings
    from solov2.evaluation.coco_eval import evaluate_results, load_coco
    ann, _ = pseudo_ground_truth(native_val_results, 4, tmp_path / "val4.json")
    images = tmp_path / "val"
    broken = val_images_with_a_broken_one(ann, images, 1)   # the 2nd image in file order: rank 1's first
    work, more = tmp_path / "work", val_settings(ann) + [f"data.val.img_prefix={images}/",
                                                         "model.backbone.norm_eval=False"]
    r = launch(setup, work, epochs=2, log_dir=tmp_path / "logs1", init=ckpt, more=more, fails=True)
    logs = [(tmp_path / "logs1" / f"worker_{k}.log").read_text() for k in (0, 1)]
    assert r.returncode != 0, (r.stdout + r.stderr)[-3000:]
    assert any(s.startswith("error:") and broken.name in s for s in logs[1].splitlines()), logs[1][-3000:]
    assert "error: epoch 1: validation failed on rank 1 (see its log); every rank stops" in logs[0], logs[0][-3000:]
    assert sorted(p.name for p in work.glob("*.ckpt")) == ["epoch_1.ckpt"] and not val_rows(work)

    broken.write_bytes((DATA / "val" / broken.name).read_bytes())
    r = launch(setup, work, epochs=2, log_dir=tmp_path / "logs2", init=ckpt, more=more)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    log0 = (tmp_path / "logs2" / "worker_0.log").read_text()
    # relaunching the same command continues from the newest snapshot
    assert f"resumed from {work / 'epoch_1.ckpt'} at epoch 1" in log0 and (work / "epoch_2.ckpt").is_file(), log0
    assert "epoch 1: evaluating it first" in log0 and "epoch 2 validation: 4 image(s) on 2 devices in" in log0, log0
    rows = val_rows(work)
    assert [row["epoch"] for row in rows] == [1, 2] and min(row["segm_mAP"] for row in rows) > 0.05, rows
    assert sorted(p.name for p in work.glob("best_*.ckpt")) == [
        f"best_segm_mAP_epoch_{1 + int(rows[1]['segm_mAP'] > rows[0]['segm_mAP'])}.ckpt"]
    out = tmp_path / "one_process.json"
    v = cli("valuation.py", CFG, work / "epoch_2.ckpt", "--ann", ann, "--img-prefix", images, "--out", out)
    assert v.returncode == 0, v.stderr[-3000:]
    want = evaluate_results(load_coco(str(ann)), json.loads(out.read_text()))
    for t in ("segm", "bbox"):
        np.testing.assert_allclose([rows[1][f"{t}_{s}"] for s in SUFFIXES], want[t]["stats"][:6], rtol=0, atol=1e-6,
                                   err_msg=t)


def worker_pid(work: Path, rank: int):
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"MS_ROLE=MS_WORKER" in env and f"RANK_ID={rank}".encode() in env and str(work).encode() in cmd:
            return int(proc.name)
    return None


def test_killed_worker_ends_the_job_with_an_error(setup, tmp_path):
    work, logs = tmp_path / "work", tmp_path / "logs"
    job = launch(setup, work, 100, logs, wait=False, fails=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            log = logs / "worker_1.log"
            if log.is_file() and "epoch [1][1/1]" in (logs / "worker_0.log").read_text(errors="ignore"):
                break
            assert job.poll() is None, job.stdout.read()[-3000:]
            time.sleep(2)
        pid = worker_pid(work, 1)
        assert pid is not None, "rank 1 worker not found"
        os.kill(pid, signal.SIGKILL)
        out, _ = job.communicate(timeout=300)   # must end, not hang
        assert job.returncode != 0, out[-3000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
