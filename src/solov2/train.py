"""Fine-tuning loop shared by train.py (one device) and train_multi.py (data parallel under msrun).

One plain loop: deterministic batches -> jit-compiled train step (forward, loss, grads, all-reduce, clip, SGD)
-> logs -> a snapshot after every epoch. Resume restarts at an epoch boundary with the exact same state.
"""
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from tqdm import tqdm

from .config import load_config
from .data.coco import CocoDataset
from .data.loader import TrainLoader
from .losses import solov2_loss
from .models import build_model
from .run_record import changes_since_last_run, record_run
from .runtime import SolovError, load_weights
from .snapshot import (latest_valid_snapshot, load_snapshot, lr_schedule, params_digest, prune_snapshots,
                       save_snapshot)


def init_distributed(distributed: bool):
    """(rank, world). Under msrun/rank tables (or distributed=True) initialise HCCL/MCCL and data parallelism."""
    launched = "MS_ROLE" in os.environ or "RANK_TABLE_FILE" in os.environ
    if not (distributed or launched):
        return 0, 1
    if not launched:
        raise SolovError("distributed training needs a launcher: use msrun_launcher.sh (see README)")
    from mindspore.communication import get_group_size, get_rank, init
    init()
    world = get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world)
    return get_rank(), world


def make_loss_fn(net, head_cfg):
    """batch tensors (see `to_tensors`) -> (loss, loss_ins, loss_cate): the official SOLOv2 objective."""
    h = head_cfg

    def forward(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins):
        cate, kernels, mask_feat = net(img)
        loss_ins, loss_cate = solov2_loss(cate, kernels, mask_feat, cate_target, pos_cell, pos_mask, pos_valid,
                                          num_ins, h.ins_loss_weight, h.cate_loss_weight, h.focal_gamma,
                                          h.focal_alpha)
        return loss_ins + loss_cate, loss_ins, loss_cate
    return forward


def make_optimizer(net, o, iters_per_epoch: int, total_epochs: int) -> nn.SGD:
    """SGD with momentum over the trainable parameters and the per-iteration learning-rate table.

    One parameter group, so weight decay applies to every trainable parameter as in the official recipe:
    MindSpore's default filter would silently skip every parameter named gamma/beta (BN and GN affine).
    """
    group = [{"params": net.trainable_params(), "weight_decay": o.weight_decay}]
    return nn.SGD(group, learning_rate=lr_schedule(o, iters_per_epoch, total_epochs), momentum=o.momentum)


def make_train_step(net, optimizer, head_cfg, grad_clip: Optional[float], world: int, jit: bool):
    """A function batch -> (loss, loss_ins, loss_cate) that also applies one SGD update."""
    grad_fn = ms.value_and_grad(make_loss_fn(net, head_cfg), None, optimizer.parameters, has_aux=True)
    # value_and_grad does not all-reduce by itself; losses are normalised per device as in the official code,
    # and the reducer averages the gradients (= official DDP).
    reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=world) if world > 1 else None

    def step(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins):
        (loss, loss_ins, loss_cate), grads = grad_fn(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins)
        if reducer is not None:
            grads = reducer(grads)
        if grad_clip:
            grads = ops.clip_by_global_norm(grads, grad_clip)
        loss = ops.depend(loss, optimizer(grads))
        return loss, loss_ins, loss_cate

    return ms.jit(step) if jit else step


def to_tensors(batch: dict):
    return (ms.Tensor(batch["img"]), ms.Tensor(batch["cate_target"]), ms.Tensor(batch["pos_cell"]),
            ms.Tensor(batch["pos_mask"]), ms.Tensor(batch["pos_valid"]), ms.Tensor(batch["num_ins"], ms.float32))


class Logger:
    """Rank-0 log: human lines on the console (through tqdm) and train.log, one JSON object per line in log.json."""

    def __init__(self, work_dir: Path, enabled: bool):
        self.enabled, self.work_dir = enabled, work_dir
        self.rows = []

    def line(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)
            with open(self.work_dir / "train.log", "a") as f:
                f.write(text + "\n")

    def record(self, row: dict) -> None:
        if self.enabled:
            self.rows.append(row)
            with open(self.work_dir / "log.json", "a") as f:
                f.write(json.dumps(row) + "\n")

    def plot(self) -> None:
        """Loss curves of the whole run (log.json, resumed runs included) -> loss_curve.png."""
        if not self.enabled:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = [json.loads(s) for s in (self.work_dir / "log.json").read_text().splitlines() if s.strip()]
        if not rows:
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        it = [r["iter"] for r in rows]
        for key in ("loss", "loss_ins", "loss_cate"):
            ax.plot(it, [r[key] for r in rows], label=key)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.work_dir / "loss_curve.png", dpi=100)
        plt.close(fig)


def train(config: str, work_dir: Optional[str] = None, resume: Optional[str] = None,
          load_from: Optional[str] = None, seed: Optional[int] = None, deterministic: bool = False,
          overrides: Sequence[str] = (), mode: str = "graph", distributed: bool = False,
          keep_last: int = 3) -> Path:
    """Fine-tune SOLOv2; returns the work dir. See README "Fine-tuning" for the recipe."""
    rank, world = init_distributed(distributed)
    cfg = load_config(config, overrides)
    d, o = cfg.data, cfg.optim
    work = Path(work_dir or cfg.work_dir or Path("work_dirs") / Path(config).stem)
    if work.exists() and not work.is_dir():
        raise SolovError(f"{work}: --work-dir exists and is not a folder")
    if deterministic:
        ms.set_context(deterministic="ON")
    snapshot = None
    if resume == "auto":
        snapshot = latest_valid_snapshot(work)
    elif resume:
        snapshot = Path(resume)
        if not snapshot.is_file():
            raise SolovError(f"{snapshot}: no such snapshot to resume from")

    dataset = CocoDataset(d.train_ann_file, d.train_img_prefix, skip_bad=d.skip_bad, max_images=d.train_max_images)
    if len(dataset) == 0:
        raise SolovError(f"{d.train_ann_file}: no usable training image")
    if len(dataset.class_names) != cfg.head.cate_out_channels:
        raise SolovError(f"{d.train_ann_file}: {len(dataset.class_names)} categories, but the config's model has "
                         f"{cfg.head.cate_out_channels} classes (set model.bbox_head.num_classes="
                         f"{len(dataset.class_names) + 1}: classes + background)")
    seed = int(seed if seed is not None else np.random.SeedSequence().entropy % 2 ** 31)
    ms.set_seed(seed)   # same initial weights on every rank
    net = build_model(cfg)
    net.set_train(True)
    loader = TrainLoader(dataset, cfg, seed, world, rank, workers=d.workers_per_gpu)
    iters = len(loader)
    total = o.total_epochs
    optimizer = make_optimizer(net, o, iters, total)
    log = Logger(work, rank == 0)
    if rank == 0:
        work.mkdir(parents=True, exist_ok=True)
    start_epoch, global_step = 0, 0
    if snapshot is not None:
        changed = changes_since_last_run(work, cfg)
        try:
            meta = load_snapshot(snapshot, net, optimizer)
        except SolovError as e:
            raise SolovError(f"{e}" + (f"; changed since that run: {'; '.join(changed[:6])}" if changed else "")) \
                from None
        if changed:
            log.line(f"warning: resuming with {len(changed)} setting(s) changed since the run that wrote "
                     f"{snapshot.name}: {'; '.join(changed)}")
        start_epoch, global_step = meta["epoch"], meta["global_step"]
        if meta["seed"] != seed:
            seed = meta["seed"]
            loader.seed = seed   # the data order belongs to the snapshot's run
        log.line(f"resumed from {snapshot} at epoch {start_epoch} (global step {global_step}, seed {seed})")
    elif resume == "auto":
        log.line(f"no snapshot in {work}; starting a new run")
    load_from = load_from or (cfg.load_from if snapshot is None else None)
    if load_from and snapshot is None:
        reinit = load_weights(net, load_from, skip_mismatched=True)
        log.line(f"loaded weights from {load_from}" + (f"; re-initialised {len(reinit)} parameter(s) whose shape "
                                                       f"differs: {', '.join(reinit)}" if reinit else ""))
    if rank == 0:
        record_run(work, cfg)
    step = make_train_step(net, optimizer, cfg.head, o.grad_clip, world, jit=mode == "graph")
    log.line(f"SOLOv2 fine-tuning: {len(dataset)} images, {len(dataset.class_names)} classes, {world} device(s) x "
             f"{d.imgs_per_gpu} images, {iters} iterations/epoch, epochs {start_epoch + 1}..{total}, seed {seed}, "
             f"mode {mode}, work dir {work}")
    lrs = lr_schedule(o, iters, total)
    t_start, done_iters = time.time(), 0
    for epoch in range(start_epoch, total):
        bar = tqdm(total=iters, desc=f"epoch {epoch + 1}/{total}", disable=rank != 0, dynamic_ncols=True,
                   leave=False)
        acc, t_data, t_iter = np.zeros(3), 0.0, time.time()
        n_acc = 0
        t0 = t_interval = time.time()
        for i, batch in enumerate(loader.epoch(epoch)):
            t_data += time.time() - t0
            loss, li, lc = step(*to_tensors(batch))
            acc += [float(loss.asnumpy()), float(li.asnumpy()), float(lc.asnumpy())]
            n_acc += 1
            global_step += 1
            done_iters += 1
            bar.update(1)
            bar.set_postfix(loss=f"{acc[0] / n_acc:.3f}")
            if not np.isfinite(acc).all():
                raise SolovError(f"loss is not finite at epoch {epoch + 1} iteration {i + 1}; lower the lr "
                                 f"(optimizer.lr) or check the data")
            if (i + 1) % cfg.log_interval == 0 or i + 1 == iters:
                sec = (time.time() - t_interval) / n_acc          # this interval (includes graph compiles)
                eta = (time.time() - t_start) / done_iters * ((total - epoch) * iters - i - 1)
                row = dict(epoch=epoch + 1, iter=global_step, lr=lrs[global_step - 1], loss=acc[0] / n_acc,
                           loss_ins=acc[1] / n_acc, loss_cate=acc[2] / n_acc, time=sec, data_time=t_data / n_acc)
                log.record(row)
                log.line(f"epoch [{epoch + 1}][{i + 1}/{iters}] lr {row['lr']:.2e} loss {row['loss']:.4f} "
                         f"(ins {row['loss_ins']:.4f}, cate {row['loss_cate']:.4f}) {sec:.2f} s/it "
                         f"(data {row['data_time']:.2f} s) eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
                acc[:], n_acc, t_data, t_interval = 0, 0, 0.0, time.time()
            t0 = time.time()
        bar.close()
        # checkpoint_config.interval (default 1: every epoch); the last epoch is always saved
        if rank == 0 and ((epoch + 1) % cfg.checkpoint_interval == 0 or epoch + 1 == total):
            path = work / f"epoch_{epoch + 1}.ckpt"
            save_snapshot(path, net, optimizer, epoch + 1, seed)
            prune_snapshots(work, keep_last)
            log.plot()
            log.line(f"epoch {epoch + 1} done in {time.time() - t_iter:.0f} s: saved {path} "
                     f"(weights {params_digest(net)})")
    return work
