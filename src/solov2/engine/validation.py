"""Validation while training (the config's `evaluation` section): COCO AP of the training net's current weights
on data.val, computed in the training process by the code valuation.py runs (`predict_and_evaluate`).

The validation network is a float32 SOLOv2 built once per run, behind a `Predictor` with dynamic shapes, so GRAPH
mode compiles it once for every evaluation and image size; before each evaluation it receives the training net's
current parameter values (a copy in memory, no snapshot reload; under msrun rank 0's, those of the snapshot, on
every rank). Being a separate float32 cell, it gives the AP that valuation.py gives on the same weights whatever
the training's amp level.
"""
import json
import os
import re
import time
from functools import partial
from pathlib import Path
from typing import Dict, Optional, Tuple

import mindspore as ms
import numpy as np

from solov2.checkpoint import write_checkpoint
from solov2.engine.collective import failed_ranks, gather_bytes, ranks_text, see_logs, share_from_rank0
from solov2.config import SOLOv2Config
from solov2.config.settings import VAL_METRIC_SUFFIXES
from solov2.data.transforms import padded_test_size
from solov2.engine.logger import Logger, read_log_rows
from solov2.errors import SolovError, check_file
from solov2.evaluation.coco_eval import (check_class_count, check_ground_truth, first_image_ids, format_metrics,
                                         load_coco, summary_line)
from solov2.evaluation.results import predict_and_evaluate
from solov2.inference import Predictor
from solov2.models.solov2 import build_model

Best = Optional[Tuple[float, int]]   # (value of evaluation.save_best, epoch), None before the first evaluation


def validation_set(cfg: SOLOv2Config):
    """(COCO of data.val, its img_prefix), checked as a run needs them, before the first training step:
    the annotation file readable, its categories the model's classes, at least one image, every image file there."""
    d, where = cfg.data, cfg.source or "the config"
    if not d.val_ann_file:
        raise SolovError(f"{where}: evaluation needs data.val with ann_file and img_prefix (or run with "
                         f"--no-validate)")
    coco = load_coco(d.val_ann_file)
    check_ground_truth(coco, cfg.evaluation.metrics)
    check_class_count(cfg.head.cate_out_channels, coco, where)
    ids = first_image_ids(coco, d.val_max_images)
    if not ids:
        raise SolovError(f"{d.val_ann_file}: no image to validate on (data.val)")
    for i in ids:
        path = os.path.join(d.val_img_prefix, coco.imgs[i]["file_name"])
        check_file(path, "image", hint=f" (data.val.img_prefix {d.val_img_prefix}, image id {i})")
        try:   # too thin for the test scale: found now, not after the first epoch's training
            padded_test_size(coco.imgs[i]["height"], coco.imgs[i]["width"], d.test_scale, d.size_divisor)
        except SolovError as e:
            raise SolovError(f"{path}: {e} (its size in {d.val_ann_file}, data.val)") from None
    return coco, d.val_img_prefix


class Validator:
    """`validator(net, epoch)` -> (metrics as `evaluate_results` returns them, None on ranks > 0; seconds) for the
    current weights of rank 0's `net` (epoch: named in a failure's error). Every rank has one: each predicts its
    shard of the images (rank, rank + world, ...) with rank 0's weights (`share_from_rank0`) and rank 0 evaluates
    them all (`gather_records`), with the results of one process.

    coco, img_prefix: the checked validation set (`validation_set`). Build it after the training net: its own
    cell draws initial weights, which are overwritten before every evaluation.
    """

    def __init__(self, cfg: SOLOv2Config, coco, img_prefix: str, *, rank: int = 0, world: int = 1):
        self.cfg, self.coco, self.img_prefix, self.rank, self.world = cfg, coco, img_prefix, rank, world
        self.predictor = Predictor(cfg, net=build_model(cfg))
        self.params = {p.name: p for p in self.predictor.net.get_parameters()}

    @property
    def num_images(self) -> int:
        return len(first_image_ids(self.coco, self.cfg.data.val_max_images))

    @property
    def compiled_graphs(self) -> int:
        """Inference graphs compiled in this run (GRAPH mode: 1 after any number of evaluations)."""
        return self.predictor.compiled_graphs

    def __call__(self, net, epoch: int) -> Tuple[Optional[Dict[str, dict]], float]:
        t0 = time.time()
        names = [p.name for p in net.get_parameters()]   # the same as ours: built from the same config
        try:
            values, failure = [p.asnumpy().astype(np.float32) for p in net.get_parameters()], None
        except Exception as e:   # the other ranks must hear of it: see share_from_rank0
            values, failure = None, e
        if self.world > 1:
            failed, values = share_from_rank0(values, [self.params[n].shape for n in names], rank=self.rank,
                                              world=self.world)
            raise_failure(failure, failed, epoch=epoch)
        elif failure is not None:
            raise failure
        gather = partial(gather_records, rank=self.rank, world=self.world, epoch=epoch) if self.world > 1 else None
        try:
            for name, value in zip(names, values):
                self.params[name].set_data(ms.Tensor(value))
        except Exception as e:
            if gather is None:
                raise
            gather([], e)   # raises it, after the same collective calls as the other ranks make
        _, metrics = predict_and_evaluate(self.predictor, self.coco, self.img_prefix, self.cfg.evaluation.metrics,
                                          self.cfg.data.val_max_images, progress=False,
                                          shard=(self.rank, self.world), gather=gather)
        return metrics, time.time() - t0


def gather_records(records: list, failure: Optional[BaseException], *, rank: int, world: int,
                   epoch: int) -> Optional[list]:
    """Every rank's validation records (JSON through `gather_bytes`) on rank 0, in rank order; None on the
    others. A rank's failure is raised on that rank and, as a SolovError naming it, on every other one."""
    try:
        payload = json.dumps(records).encode() if failure is None else b""
    except Exception as e:   # not JSON-serialisable: still tell the other ranks
        payload, failure = b"", e
    failed, payloads = gather_bytes(payload, failure is None, rank=rank, world=world)
    raise_failure(failure, failed, epoch=epoch)
    return None if payloads is None else [json.loads(p) for p in payloads]


def raise_failure(failure: Optional[BaseException], failed: list, *, epoch: int) -> None:
    """After a collective: this rank's own failure, else a SolovError naming the epoch and the ranks that failed
    (ranks > 0 write no train.log that would say which evaluation it was), if any."""
    if failure is not None:
        raise failure
    if failed:
        raise SolovError(f"epoch {epoch}: validation failed on {ranks_text(failed)} ({see_logs(failed)}); every "
                         "rank stops")


def val_row(epoch: int, global_step: int, metrics: Dict[str, dict]) -> dict:
    """The log.json row of one evaluation, in mmdetection's form: {"mode": "val", "epoch": N, "iter": ...,
    "segm_mAP": ..., "segm_mAP_50": ..., ..., "bbox_mAP_l": ...} (pycocotools' first 6 stats; -1 = undefined)."""
    row = dict(mode="val", epoch=epoch, iter=global_step)
    for iou_type, m in metrics.items():
        row.update({f"{iou_type}_{s}": m["stats"][i] for i, s in enumerate(VAL_METRIC_SUFFIXES)})
    return row


def best_path(work: Path, key: str, epoch: int) -> Path:
    return work / f"best_{key}_epoch_{epoch}.ckpt"


def best_name_re(key: Optional[str] = None) -> "re.Pattern":
    """The file names `best_path` gives: for `key`, or for any key (None)."""
    return re.compile(rf"^best_{'.+' if key is None else re.escape(key)}_epoch_\d+\.ckpt$")


def keep_best(work: Path, net, key: str, row: dict, best: Best) -> Best:
    """If row[key] beats `best` (strictly: the earliest epoch keeps a tie), write best_<key>_epoch_N.ckpt (the
    weights, with `epoch` and `key` entries) atomically, then remove the earlier best_<key>_epoch_*.ckpt.
    Returns the new best (value, epoch)."""
    value, epoch = float(row[key]), int(row["epoch"])
    if best is not None and value <= best[0]:
        return best
    path = best_path(work, key, epoch)
    write_checkpoint(path, [{"name": p.name, "data": p} for p in net.get_parameters()],
                     append_dict={"epoch": epoch, key: ms.Tensor(np.array([value], np.float64))})
    mine = best_name_re(key)   # never a user's copy beside it
    for old in work.iterdir():
        if mine.match(old.name) and old != path:
            old.unlink()
    return value, epoch


def best_entries(key: Optional[str], best: Best) -> dict:
    """The snapshot entries that carry the best so far across a resume: {best_<key>: value, best_<key>_epoch: N}."""
    if key is None or best is None:
        return {}
    # float64: a Python float entry is stored as float32, and a resumed run would then compare the next AP with
    # a rounded best (a tie could become a new best that the uninterrupted run does not have)
    return {f"best_{key}": ms.Tensor(np.array([best[0]], np.float64)), f"best_{key}_epoch": int(best[1])}


def best_from_counters(key: Optional[str], counters: Optional[dict]) -> Best:
    """The best (value, epoch) a snapshot's counters carry for `key` (see `best_entries`), else None."""
    if key is None or counters is None or f"best_{key}" not in counters:
        return None
    return counters[f"best_{key}"], int(counters[f"best_{key}_epoch"])


def best_with_made_up(work: Path, key: Optional[str], epoch: int, best: Best) -> Best:
    """`best` (a snapshot's) updated by the `val` rows of work/log.json up to `epoch` (the snapshot's): an
    evaluation made up after that snapshot was saved may have set a best it does not hold, and a second
    interruption would otherwise let a worse epoch replace that best checkpoint. A row is written only once its
    best checkpoint is (`_evaluate_and_keep`). Strictly better wins, in epoch order: keep_best's rule."""
    if key is None:
        return best
    rows = [r for r in read_log_rows(work) if r.get("mode") == "val" and isinstance(r.get("epoch"), int)
            and r["epoch"] <= epoch and isinstance(r.get(key), (int, float))]
    for r in sorted(rows, key=lambda r: r["epoch"]):
        if best is None or r[key] > best[0]:
            best = (float(r[key]), r["epoch"])
    return best


def evaluation_due(epoch: int, interval: int, total: int) -> bool:
    """Whether epoch (1-based) ends with an evaluation: every `interval` epochs and after the last."""
    return epoch % interval == 0 or epoch == total


def evaluated_epochs(work: Path) -> set:
    """The epochs that have a `val` row in work/log.json (every rank can read it: the work dir is shared)."""
    return {r.get("epoch") for r in read_log_rows(work) if r.get("mode") == "val"}


def _rss_mb() -> float:
    """Resident memory of this process (MB), logged with each evaluation: it must stay flat across them."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):   # a log figure must never stop a run
        return float("nan")


def run_validation(validator: Optional[Validator], net, *, log: Logger, work: Path, epoch: int, global_step: int,
                   best: Best, rank: int, world: int) -> Best:
    """One evaluation at the end of `epoch` (1-based), on every rank: each predicts its shard of the images, rank 0
    evaluates them all and logs (train.log: the COCO summary and per-class table; log.json: `val_row`), keeps the
    best checkpoint (evaluation.save_best), and returns the new best. Any failure on any rank (an image, the
    evaluation, the best checkpoint's write; the log's, which only a one-process run's Logger raises) ends every
    rank (`failed_ranks`), never a hang."""
    ok, error = True, None
    if validator is not None:
        try:
            best = _evaluate_and_keep(validator, net, log=log, work=work, epoch=epoch, global_step=global_step,
                                      best=best)
        except Exception as e:  # re-raised below, after the other ranks have been told
            ok, error = False, e
    raise_failure(error, failed_ranks(ok, rank=rank, world=world), epoch=epoch)   # every rank stops together
    return best


def _evaluate_and_keep(validator: Validator, net, *, log: Logger, work: Path, epoch: int, global_step: int,
                       best: Best) -> Best:
    metrics, seconds = validator(net, epoch)
    if metrics is None:   # a rank > 0: its shard went to rank 0
        return best
    row = val_row(epoch, global_step, metrics)
    log.line(format_metrics(metrics))
    devices = f" on {validator.world} devices" if validator.world > 1 else ""
    log.line(f"epoch {epoch} validation: {validator.num_images} image(s){devices} in {seconds:.1f} s: "
             f"{summary_line(metrics)} (inference graphs compiled in this run: {validator.compiled_graphs}, "
             f"rss {_rss_mb():.0f} MB)")
    key = validator.cfg.evaluation.save_best
    new = best if key is None else keep_best(work, net, key, row, best)
    # the row last: a resume counts the epoch as evaluated (`evaluated_epochs`) only once its best checkpoint is
    # written too; stopped in between, the evaluation is made up
    log.record(row)
    if new != best:
        log.line(f"epoch {epoch}: best {key} {new[0]:.4f}: saved {best_path(work, key, epoch)}")
    return new
