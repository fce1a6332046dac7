"""The fine-tuning loop, shared by train.py (one device) and train_multi.py (data parallel under msrun).

One plain loop over a built model: deterministic batches -> the train step (forward, loss, grads, all-reduce,
clip, SGD; jit-compiled in GRAPH mode) -> logs -> a snapshot after every epoch. A resume restarts at an epoch
boundary with exactly the state of the run that wrote the snapshot (weights, optimizer, counters, data order).
"""
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

import mindspore as ms
import numpy as np
from tqdm import tqdm

from solov2.checkpoint import load_weights
from solov2.config import SOLOv2Config
from solov2.data.coco import CocoDataset
from solov2.data.coco_file import check_class_count
from solov2.data.loader import TrainLoader
from solov2.engine.amp import make_loss_scaler, mixed_precision, scale_of
from solov2.engine.collective import failed_ranks, per_rank, ranks_text, see_logs
from solov2.engine.logger import Logger, drop_rows_after
from solov2.engine.optim import check_schedule, lr_schedule, make_optimizer
from solov2.engine.run_record import changes_since_last_run, record_run
from solov2.engine.runtime import init_distributed
from solov2.engine.snapshot import load_snapshot, params_digest, prune_snapshots, read_counters, save_snapshot
from solov2.engine.train_step import make_train_step, to_tensors
from solov2.engine.validation import (Validator, best_entries, best_from_counters, best_with_made_up, evaluated_epochs,
                                     evaluation_due, run_validation, validation_set)
from solov2.engine.workdir import (check_load_from, check_new_run, check_resume_target, find_snapshot, lock_work_dir,
                                   remove_stale_temporaries, unlock_work_dir)
from solov2.errors import SolovError, failure_line
from solov2.models.solov2 import build_model

T = TypeVar("T")


def agree_to_start(work: Path, counters: Optional[dict], *, pending: bool, failure: Optional[BaseException],
                   rank: int, world: int, seed: int = 0) -> int:
    """Before any rank builds a model (one collective): no rank failed its start-up checks (`failure`: this rank's
    error, raised here after the others have been told), and every rank resumes from the same snapshot (epoch,
    step; pending: its epoch's evaluation is still to be made up), or none does. On several nodes a work dir that
    is not shared would resume node 0 and restart the others, each then training its own weights.

    Returns rank 0's `seed` (0 <= seed < 2**31), which every rank then uses: a run without --seed draws one per
    process, and ranks with different seeds would start from different weights wherever load_from does not cover
    them (the new class channels) and shuffle the epoch differently, so that their shards overlap."""
    mine = (failure is not None, *((counters["epoch"], counters["global_step"]) if counters else (0, 0)), pending,
            seed >> 16, seed & 0xFFFF)   # two halves: per_rank carries integers below 2**24 exactly
    table = per_rank(mine, rank=rank, world=world)
    if failure is not None:
        raise failure
    failed = [r for r in range(world) if table[r, 0]]
    if failed:
        raise SolovError(f"{ranks_text(failed)} failed before training ({see_logs(failed)}); every rank stops")
    starts = table[:, 1:4]
    if (starts == starts[0]).all():
        return int(table[0, 4]) << 16 | int(table[0, 5])
    by_start: Dict[Tuple[int, int, bool], List[int]] = {}
    for r, (epoch, step, due) in enumerate(starts):
        by_start.setdefault((int(epoch), int(step), bool(due)), []).append(r)
    found = "; ".join((f"epoch {e} (step {g}{', its evaluation to make up' if due else ''})" if e else "no snapshot")
                      + f" on {ranks_text(ranks)}"
                      for (e, g, due), ranks in sorted(by_start.items()))
    raise SolovError(f"{work}: the ranks would resume from different snapshots ({found}): on several nodes the work "
                     f"dir must be on storage that every node shares")


def training_set(cfg: SOLOv2Config) -> CocoDataset:
    """data.train as a CocoDataset whose category count equals the model's classes."""
    d = cfg.data
    dataset = CocoDataset(d.train_ann_file, d.train_img_prefix, skip_bad=d.skip_bad, max_images=d.train_max_images)
    if len(dataset) == 0:
        raise SolovError(f"{d.train_ann_file}: no usable training image")
    check_class_count(d.train_ann_file, len(dataset.class_names), cfg.head.cate_out_channels,
                      cfg.source or "the config")
    return dataset


def train(cfg: SOLOv2Config, work_dir, *, resume: Optional[str] = None, load_from: Optional[str] = None,
          seed: Optional[int] = None, mode: str = "graph", distributed: bool = False, keep_last: int = 3,
          validate: bool = True, force: bool = False) -> Path:
    """Fine-tune SOLOv2 as `cfg` says; returns the work dir. See README "Fine-tuning" for the recipe.

    resume: 'auto' (newest snapshot of work_dir, else a new run) or a snapshot path; its seed then wins over
    `seed`. load_from: initial weights (default cfg.load_from; parameters whose shape differs, e.g. the class
    channels of a COCO checkpoint, keep their fresh initialisation). mode: 'graph' jit-compiles the step.
    keep_last: snapshots kept (0: all). validate: False skips the config's `evaluation` (validation on data.val
    every `interval` epochs and after the last, `solov2.engine.validation`; the best checkpoint is kept across
    resumes). force: start a new run in a work dir an earlier run left checkpoints in (they and its logs are
    deleted; without it that is an error; with a snapshot to resume, too). MindSpore's context must be set already
    (`set_runtime`).
    """
    rank, world = init_distributed(distributed)
    work = Path(work_dir)
    if work.exists() and not work.is_dir():
        raise SolovError(f"{work}: --work-dir exists and is not a folder")
    args = dict(rank=rank, world=world, resume=resume, load_from=load_from, seed=seed, mode=mode, keep_last=keep_last,
                validate=validate, force=force)
    if rank != 0:   # rank 0 owns the work dir
        return _train(cfg, work, **args)
    created = not work.exists()
    try:
        work.mkdir(parents=True, exist_ok=True)
        lock = lock_work_dir(work)
    except Exception as e:   # e.g. another run holds the work dir: raised after the other ranks have been told
        agree_to_start(work, None, pending=False, failure=e, rank=rank, world=world)
    try:
        return _train(cfg, work, **args)
    finally:
        unlock_work_dir(work, lock)
        if created and not any(work.iterdir()):   # a run that failed before writing anything leaves nothing
            work.rmdir()


def _train(cfg: SOLOv2Config, work: Path, *, rank: int, world: int, resume: Optional[str], load_from: Optional[str],
           seed: Optional[int], mode: str, keep_last: int, validate: bool, force: bool) -> Path:
    """The body of `train`, with the work dir locked (rank 0)."""
    d, o, ev = cfg.data, cfg.optim, cfg.evaluation
    evaluating = validate and ev.interval > 0
    snapshot = counters = dataset = val_set = failure = None
    removed: List[str] = []
    replaced: List[Path] = []
    try:   # the checks that may fail on one rank only (a file one node lacks): see agree_to_start
        if rank == 0:
            removed = remove_stale_temporaries(work)   # of a save that was interrupted
        snapshot = find_snapshot(work, resume)
        if snapshot is None:   # a resumed run does not read load_from
            check_load_from(load_from or cfg.load_from, work)
            if rank == 0:
                replaced = check_new_run(work, resume=resume, force=force)
        elif force:   # never silently a resume when a new run was asked for
            raise SolovError(f"--force starts a new run, but --resume {resume} found {snapshot}: drop --force to "
                             f"continue that run, or choose another --work-dir")
        counters = read_counters(snapshot) if snapshot is not None else None
        if counters is not None and counters["epoch"] > o.total_epochs:
            raise SolovError(f"{snapshot}: saved after epoch {counters['epoch']}, past this run's last (total_epochs "
                             f"{o.total_epochs}): raise total_epochs (--cfg-options total_epochs=N) to train on")
        if counters is not None and resume != "auto" and rank == 0:
            check_resume_target(work, snapshot, counters["epoch"])
        dataset = training_set(cfg)
        val_set = validation_set(cfg) if evaluating else None   # its errors come before the first step
        pending = bool(evaluating and counters and counters["epoch"] > 0
                       and evaluation_due(counters["epoch"], ev.interval, o.total_epochs)
                       and counters["epoch"] not in evaluated_epochs(work))   # its run stopped in that evaluation
    except Exception as e:
        failure, pending = e, False
    given_seed = seed
    if counters is not None:
        seed = counters["seed"]   # the data order belongs to the snapshot's run
    elif seed is None:
        seed = int(np.random.SeedSequence().entropy % 2 ** 31)
    seed = agree_to_start(work, counters, pending=pending, failure=failure, rank=rank, world=world, seed=seed)
    ms.set_seed(seed)   # rank 0's seed: the same initial weights and data order on every rank
    net = build_model(cfg)
    net.set_train(True)
    load_from = load_from or (cfg.load_from if snapshot is None else None)
    reinit = load_weights(net, load_from, skip_mismatched=True) if load_from and snapshot is None else None
    # --force over an earlier run: once every rank is ready and rank 0 has its weights, before any log line
    on_rank0(lambda: [path.unlink() for path in replaced], what=f"delete the earlier run's files in {work}",
             rank=rank, world=world)
    validator = Validator(cfg, *val_set, rank=rank, world=world) if evaluating else None   # after net: see Validator
    best = best_from_counters(ev.save_best, counters)   # kept through a --no-validate run too
    if counters is not None:
        best = best_with_made_up(work, ev.save_best, counters["epoch"], best)
    loader = TrainLoader(dataset, cfg, seed=seed, world=world, rank=rank, workers=d.workers_per_gpu)
    iters, total = len(loader), o.total_epochs
    check_schedule(total, iters)
    optimizer = make_optimizer(net, o, iters, total)
    scaler = make_loss_scaler(cfg.amp)
    log = Logger(work, rank == 0, strict=world == 1)
    if removed:
        log.line(f"removed {len(removed)} temporary file(s) of an interrupted save: {', '.join(removed)}")
    start_epoch, global_step = 0, 0
    if snapshot is not None:
        changed = changes_since_last_run(work, cfg)
        try:
            restored = load_snapshot(snapshot, net, optimizer, scaler)
        except SolovError as e:
            raise SolovError(f"{e}" + (f"; changed since that run: {'; '.join(changed[:6])}" if changed else "")) \
                from None
        if changed:
            log.line(f"warning: resuming with {len(changed)} setting(s) changed since the run that wrote "
                     f"{snapshot.name}: {'; '.join(changed)}")
        if given_seed is not None and given_seed != seed:
            log.line(f"warning: --seed {given_seed} ignored: the resumed run continues with its own seed {seed}")
        if restored["scaler"] == "missing":
            log.line(f"warning: {snapshot.name} holds no dynamic loss-scale state (its run had none or a static "
                     f"scale); starting from the initial scale {scale_of(scaler):g}")
        elif restored["scaler"] == "dropped":
            log.line(f"warning: {snapshot.name} comes from a loss-scaled (mixed-precision) run; continuing without "
                     f"loss scaling (amp {cfg.amp.level})")
        start_epoch, global_step = counters["epoch"], counters["global_step"]
        if global_step != start_epoch * iters:   # snapshots are saved at the end of an epoch only
            raise SolovError(f"{snapshot}: saved after {global_step} steps in {start_epoch} epoch(s), but this run "
                             f"has {iters} steps per epoch ({world} device(s) x {d.imgs_per_gpu} images, "
                             f"{len(dataset)} training images): the learning-rate schedule counts steps, so resume "
                             f"with the device count, data.imgs_per_gpu and training set of the run that saved it")
        log.line(f"resumed from {snapshot} at epoch {start_epoch} (global step {global_step}, seed {seed})"
                 + (f"; best {ev.save_best} so far {best[0]:.4f} (epoch {best[1]})" if best else ""))
    elif resume == "auto":
        log.line(f"no snapshot in {work}; starting a new run")
    if cfg.pretrained and snapshot is None and reinit is None:   # mmcv would download it; this port reads files
        log.line(f"warning: model.pretrained {cfg.pretrained!r} is not loaded (nothing is downloaded): the model "
                 "starts from random weights; give --load-from a converted checkpoint (weight_convert.py)")
    if reinit is not None:
        log.line(f"loaded weights from {load_from}" + (f"; re-initialised {len(reinit)} parameter(s) whose shape "
                                                       f"differs: {', '.join(reinit)}" if reinit else ""))
    if start_epoch == total and not pending:   # e.g. a finished msrun job launched again; run.json stays its run's
        log.line(f"nothing to train: {snapshot.name} ended epoch {total}, the last (raise total_epochs to train on)")
        return work
    on_rank0(lambda: _record_start(work, cfg, global_step, log), what=f"write run.json and log.json in {work}",
             rank=rank, world=world)
    step = make_train_step(mixed_precision(net, cfg.amp.level), optimizer, head=cfg.head, grad_clip=o.grad_clip,
                           world=world, jit=mode == "graph", scaler=scaler)
    amp = f"amp {cfg.amp.level}" + (f", {cfg.amp.loss_scale} loss scale {scale_of(scaler):g}" if scaler else "")
    log.line(f"SOLOv2 fine-tuning: {len(dataset)} images, {len(dataset.class_names)} classes, {world} device(s) x "
             f"{d.imgs_per_gpu} images, {iters} iterations/epoch, epochs {start_epoch + 1}..{total}, seed {seed}, "
             f"mode {mode}, {amp}, work dir {work}")
    if validator is not None:
        log.line(f"validation: every {ev.interval} epoch(s) and after the last, on {validator.num_images} image(s) "
                 f"of {d.val_ann_file}, {' and '.join(ev.metrics)} AP" + (f", best checkpoint by {ev.save_best}"
                                                                          if ev.save_best else ""))
    if pending:
        log.line(f"epoch {start_epoch}: evaluating it first: its evaluation did not complete in the run that saved "
                 f"{snapshot.name}")
        best = run_validation(validator, net, log=log, work=work, epoch=start_epoch, global_step=global_step,
                              best=best, rank=rank, world=world)
    lrs = lr_schedule(o, iters, total)
    t_start, done_iters = time.time(), 0
    scale = scale_of(scaler)   # the loss scale before the next step (only a step changes it)
    for epoch in range(start_epoch, total):
        acc, t_data, t_epoch = np.zeros(3), 0.0, time.time()
        n_acc = 0
        t0 = t_interval = time.time()
        # closed on any exit, so that an error or `interrupted` starts on a line of its own
        with tqdm(total=iters, desc=f"epoch {epoch + 1}/{total}", disable=rank != 0, dynamic_ncols=True,
                  leave=False) as bar:
            for i, batch in enumerate(loader.epoch(epoch)):
                t_data += time.time() - t0
                loss, li, lc, finite = step(*to_tensors(batch))
                acc += [float(loss.asnumpy()), float(li.asnumpy()), float(lc.asnumpy())]
                if scaler is not None:
                    skipped, new_scale = not bool(finite.asnumpy()), scale_of(scaler)
                    if skipped or new_scale != scale:
                        log.line(f"epoch [{epoch + 1}][{i + 1}/{iters}] " + ("gradients not finite (float16 overflow): "
                                 "update skipped, " if skipped else "") + f"loss scale {scale:g} -> {new_scale:g}")
                    scale = new_scale
                n_acc += 1
                global_step += 1
                done_iters += 1
                bar.update(1)
                bar.set_postfix(loss=f"{acc[0] / n_acc:.3f}")
                if not np.isfinite(acc).all():
                    o3 = " (or use --amp O2: O3 runs the norm layers in float16)" if cfg.amp.level == "O3" else ""
                    raise SolovError(f"loss is not finite at epoch {epoch + 1} iteration {i + 1}; lower the lr "
                                     f"(optimizer.lr) or check the data{o3}")
                if (i + 1) % cfg.log_interval == 0 or i + 1 == iters:
                    sec = (time.time() - t_interval) / n_acc          # this interval (includes graph compiles)
                    eta = (time.time() - t_start) / done_iters * ((total - epoch) * iters - i - 1)
                    row = dict(mode="train", epoch=epoch + 1, iter=global_step, lr=lrs[global_step - 1],
                               loss=acc[0] / n_acc, loss_ins=acc[1] / n_acc, loss_cate=acc[2] / n_acc, time=sec,
                               data_time=t_data / n_acc)
                    if scaler is not None:
                        row["loss_scale"] = scale
                    log.record(row)
                    log.line(f"epoch [{epoch + 1}][{i + 1}/{iters}] lr {row['lr']:.2e} loss {row['loss']:.4f} "
                             f"(ins {row['loss_ins']:.4f}, cate {row['loss_cate']:.4f}) {sec:.2f} s/it "
                             f"(data {row['data_time']:.2f} s) eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
                    acc[:], n_acc, t_data, t_interval = 0, 0, 0.0, time.time()
                t0 = time.time()
        due = evaluating and evaluation_due(epoch + 1, ev.interval, total)
        best = end_epoch(
            best, evaluate=(lambda: run_validation(validator, net, log=log, work=work, epoch=epoch + 1,
                                                   global_step=global_step, best=best, rank=rank, world=world))
            if due else None,
            save=lambda best_now, stopped: _save_epoch(work, net, optimizer, scaler, log=log, epoch=epoch + 1,
                                                       seed=seed, extra=best_entries(ev.save_best, best_now),
                                                       keep_last=keep_last, t_epoch=t_epoch, stopped=stopped),
            save_due=(epoch + 1) % cfg.checkpoint_interval == 0 or epoch + 1 == total, epoch=epoch + 1, rank=rank,
            world=world)
    return work


def on_rank0(write: Callable[[], None], *, what: str, rank: int, world: int) -> None:
    """`write()` on rank 0 (files only rank 0 writes), one collective call on every rank: its failure (a full disk)
    is raised on rank 0 and, naming rank 0, on the others, which would otherwise wait in the next all-reduce."""
    error = None
    if rank == 0:
        try:
            write()
        except (OSError, SolovError) as e:
            error = e
    failed = failed_ranks(error is None, rank=rank, world=world) if world > 1 else []
    if error is not None:
        raise error
    if failed:
        raise SolovError(f"rank 0 could not {what} ({see_logs(failed)}); every rank stops")


def _record_start(work: Path, cfg: SOLOv2Config, global_step: int, log: Logger) -> None:
    """Rank 0, before the first step: log.json's rows past `global_step` dropped (`drop_rows_after`), run.json."""
    dropped = drop_rows_after(work, global_step)
    if dropped:
        log.line(f"log.json: dropped {dropped} row(s) after step {global_step}, training of an earlier run that no "
                 "snapshot kept (train.log keeps their lines)")
    record_run(work, cfg)


def end_epoch(best: T, *, evaluate: Optional[Callable[[], T]], save: Callable[[T, bool], None], save_due: bool,
              epoch: int, rank: int, world: int) -> T:
    """After an epoch's last step: evaluate() when it is due (None: not this epoch; every rank; returns the new
    best), then save(best, stopped) on rank 0 when `save_due` (checkpoint_config.interval, the last epoch) or when
    the evaluation failed: that epoch's training is not lost, and its snapshot keeps the best as it was before.
    Returns the best. A failed or interrupted evaluation then ends the run, raised on every rank after rank 0's
    save: msrun kills every worker as soon as one exits. If that save fails too, the evaluation's error is still
    the one raised (the save's is its cause, and a warning names it). A failed save alone ends every rank too:
    rank 0 raises its error, the others a SolovError naming rank 0 (without it they would wait in the next
    epoch's first all-reduce: msrun kills them, a RANK_TABLE_FILE launch would leave them to the collective's
    timeout)."""
    stopped = None
    if evaluate is not None:
        try:
            best = evaluate()
        except (Exception, KeyboardInterrupt) as e:
            stopped = e
    save_error = None
    if rank == 0 and (stopped is not None or save_due):
        try:
            save(best, stopped is not None)
        except Exception as e:
            save_error = e
            if stopped is not None:
                print(f"warning: epoch {epoch} was not saved: {failure_line(e)}", file=sys.stderr)
    if stopped is None:
        failed = failed_ranks(save_error is None, rank=rank, world=world) if save_due and world > 1 else []
        if save_error is not None:
            raise save_error
        if failed:
            raise SolovError(f"epoch {epoch}: rank 0 could not save its snapshot ({see_logs(failed)}); every rank "
                             f"stops")
        return best
    if world > 1 and isinstance(stopped, Exception):   # every rank saw it (run_validation): wait for the save
        try:
            failed_ranks(save_error is None, rank=rank, world=world)
        except Exception:   # a broken collective: the evaluation's error still comes first
            pass
    if save_error is not None:
        raise stopped from save_error
    raise stopped


def _save_epoch(work: Path, net, optimizer, scaler, *, log: Logger, epoch: int, seed: int, extra: dict,
                keep_last: int, t_epoch: float, stopped: bool) -> None:
    """Rank 0: epoch_{epoch}.ckpt (weights, optimizer, counters, `extra`), the pruning, the loss plot, a log line."""
    path = work / f"epoch_{epoch}.ckpt"
    save_snapshot(path, net, optimizer, epoch, seed, scaler, extra=extra)
    prune_snapshots(work, keep_last)
    log.plot()
    log.line(f"epoch {epoch} done in {time.time() - t_epoch:.0f} s: saved {path} (weights {params_digest(net)})"
             + ("; its evaluation did not complete" if stopped else ""))
