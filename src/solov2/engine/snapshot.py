"""Per-epoch training snapshots (weights + optimizer state + counters), written atomically; exact resume."""
import re
import warnings
from pathlib import Path
from typing import List, Optional

import mindspore as ms
import numpy as np

from solov2.checkpoint import (check_finite, load_checkpoint, read_checkpoint, shape_mismatch_error,
                               shape_mismatches, write_checkpoint)
from solov2.engine.amp import SCALER_KEYS, restore_scaler, scaler_state
from solov2.errors import SolovError, check_file, first_line

SNAPSHOT_RE = re.compile(r"^epoch_(\d+)\.ckpt$")


def checkpoint_epoch(name: str) -> int:
    """N of a snapshot's or a best checkpoint's file name (epoch_N.ckpt, best_<key>_epoch_N.ckpt)."""
    return int(re.search(r"epoch_(\d+)\.ckpt$", name).group(1))


def snapshots(work_dir: Path) -> List[Path]:
    """epoch_N.ckpt files of a work dir, oldest first."""
    if not work_dir.is_dir():
        return []
    found = [(checkpoint_epoch(p.name), p) for p in work_dir.iterdir() if SNAPSHOT_RE.match(p.name)]
    return [p for _, p in sorted(found)]


def save_snapshot(path: Path, net, optimizer, epoch: int, seed: int, scaler=None,
                  extra: Optional[dict] = None) -> None:
    """Write weights, BN statistics, optimizer moments and global_step, the loss scaler's state (mixed precision:
    `loss_scale.scale_value`, `loss_scale.counter`), plus the epoch and seed counters and the `extra` numbers
    (the best validation value so far, `solov2.engine.validation.best_entries`: names starting with 'best_').

    The file appears under its final name only when complete (temp file + os.replace), so a crash during the save
    never leaves a truncated epoch_N.ckpt behind. The per-step learning-rate table is not stored: it is rebuilt
    from the config, and its length changes when total_epochs does.
    """
    own = {p.name for p in net.get_parameters()}
    items = [{"name": p.name, "data": p} for p in net.get_parameters()]
    items += [{"name": p.name, "data": p} for p in optimizer.get_parameters()
              if p.name not in own and p.name != "learning_rate"]
    items += [{"name": k, "data": v} for k, v in scaler_state(scaler).items()]
    # global_step itself is the optimizer's own parameter (it drives the per-step learning rate).
    write_checkpoint(path, items, append_dict={"epoch": int(epoch), "seed": int(seed), **(extra or {})})


COUNTERS = ("epoch", "global_step", "seed")


def _is_counter(name: str) -> bool:
    return name in COUNTERS or name.startswith("best_")


def _counters(path: Path, ckpt: dict) -> dict:
    """The counters as ints, and the snapshot's 'best_*' validation entries as floats."""
    for key in COUNTERS:
        if key not in ckpt:
            raise SolovError(f"{path}: not a training snapshot (no '{key}' entry); use --load-from for weights")
    out = {k: float(ckpt[k].asnumpy().reshape(-1)[0]) for k in ckpt if k.startswith("best_")}
    return {**out, **{k: int(ckpt[k].asnumpy().reshape(-1)[0]) for k in COUNTERS}}


def read_counters(path: Path) -> dict:
    """dict(epoch, global_step, seed[, best_*]) of a snapshot, read without its weights (the seed decides the data
    order, which the loader is built with before the weights are restored)."""
    check_file(path, "snapshot file")
    try:
        ckpt = load_checkpoint(path, choice_func=_is_counter)
    except (ValueError, RuntimeError, TypeError, OSError) as e:
        raise SolovError(f"{path}: not a readable MindSpore snapshot ({first_line(e)})") from None
    return _counters(path, ckpt)


def load_snapshot(path: Path, net, optimizer, scaler=None) -> dict:
    """Restore a snapshot into net, optimizer and loss scaler; returns dict(epoch, global_step, seed, scaler),
    scaler = what happened to the loss scale (`solov2.engine.amp.restore_scaler`)."""
    ckpt = read_checkpoint(path, "snapshot")
    meta = _counters(path, ckpt)
    for name in [k for k in ckpt if k in ("epoch", "seed") or k.startswith("best_")]:
        del ckpt[name]
    meta["scaler"] = restore_scaler(scaler, {k: ckpt.pop(k) for k in SCALER_KEYS if k in ckpt})
    own = {p.name: p for p in [*net.get_parameters(), *optimizer.get_parameters()]}
    differ = shape_mismatches(own, ckpt)
    if differ:  # MindSpore would raise a RuntimeError naming neither the file nor the setting
        raise shape_mismatch_error(path, differ, own, ckpt, "snapshot", "the snapshot was made with other model "
                                   "settings, e.g. channels or classes; resume with its config")
    check_finite(path, {p.name: ckpt[p.name].asnumpy() for p in net.get_parameters() if p.name in ckpt})
    not_loaded, _ = ms.load_param_into_net(net, ckpt, strict_load=True)
    if not_loaded:
        raise SolovError(f"{path}: snapshot does not match the model: {len(not_loaded)} parameter(s) missing, "
                         f"e.g. {not_loaded[0]}")
    opt_state = {k: v for k, v in ckpt.items() if k != "learning_rate"}
    not_loaded, _ = ms.load_param_into_net(optimizer, opt_state, strict_load=True)
    not_loaded = [n for n in not_loaded if n != "learning_rate"]
    if not_loaded:
        raise SolovError(f"{path}: optimizer state incomplete, e.g. {not_loaded[0]} missing")
    return meta


def latest_valid_snapshot(work_dir: Path) -> Optional[Path]:
    """Newest epoch_N.ckpt that MindSpore can read (an unreadable one is skipped with a warning)."""
    for path in reversed(snapshots(work_dir)):
        try:
            ckpt = load_checkpoint(path, choice_func=lambda name: name in ("epoch", "global_step"))
            if "epoch" in ckpt:
                return path
        except (ValueError, RuntimeError, OSError) as e:
            if "memory" in str(e):  # a readable file this process cannot hold: stop, never resume from older
                raise SolovError(f"{path}: {first_line(e)}") from None
        warnings.warn(f"{path}: unreadable snapshot, trying an older one", stacklevel=2)
    return None


def prune_snapshots(work_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` epoch_N.ckpt (keep <= 0 keeps everything)."""
    if keep > 0:
        for path in snapshots(work_dir)[:-keep]:
            path.unlink()


def params_digest(net) -> str:
    """Short hash of all parameter values (logged so that resumed and straight runs can be compared)."""
    import hashlib
    h = hashlib.sha256()
    for p in net.get_parameters():
        h.update(np.ascontiguousarray(p.asnumpy()).tobytes())
    return h.hexdigest()[:16]
