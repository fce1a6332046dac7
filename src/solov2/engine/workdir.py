"""The training work dir as one run's own: a lock that refuses a second run, the removal of the temporary files
that an interrupted save of an earlier run left behind, and which earlier checkpoints a new or resumed run may
replace."""
import errno
import fcntl
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional

from solov2.engine.snapshot import SNAPSHOT_RE, checkpoint_epoch, latest_valid_snapshot
from solov2.engine.validation import best_name_re
from solov2.errors import SolovError, check_file, listing
from solov2.files import same_file

LOCK = ".train.lock"
# `solov2.files.atomic_write` names its temporary `.<name>.<12 hex>.tmp<suffix>`; MindSpore's checkpoint writer
# then adds its own `.tmp` while it writes. Only these names are removed, never another file.
STALE_TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp(\.[A-Za-z0-9]+)?(\.tmp)?$")


def lock_work_dir(work: Path) -> Optional[int]:
    """Take the work dir's lock until `unlock_work_dir` (or until this process ends: the kernel releases it when the
    process exits, crashed or not, so a lock is never stale); returns its file descriptor.

    A second train.py on the same work dir would log every iteration twice and overwrite the snapshots: it gets
    one line naming the work dir and the running process instead."""
    path = work / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)   # e.g. NFS mounted nolock, Lustre without -o flock: train as before, unlocked
                print(f"warning: {work}: this file system has no locks ({e.strerror}); a second run in this work "
                      f"dir would not be detected", file=sys.stderr)
                return None
            if not isinstance(e, BlockingIOError):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SolovError(f"{work}: another training run is using this work dir ({holder}); wait for it to end "
                             f"or choose another --work-dir") from None
        if _same_inode(fd, path):   # else the holder removed the file as we opened it: lock the new one
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    return fd


def _same_inode(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def unlock_work_dir(work: Path, fd: Optional[int]) -> None:
    """Remove the lock file (while still holding it, so no one can take the removed file's lock) and release it."""
    if fd is None:
        return
    if _same_inode(fd, work / LOCK):
        (work / LOCK).unlink()
    os.close(fd)


def remove_stale_temporaries(work: Path) -> List[str]:
    """Delete the temporary files of an interrupted save (a kill during a snapshot save leaves one as large as the
    snapshot); returns their names. Call with the work dir's lock held: no other run is saving there."""
    removed = []
    for p in sorted(work.iterdir()):
        if STALE_TEMP_RE.match(p.name) and p.is_file():
            p.unlink()
            removed.append(p.name)
    return removed


def find_snapshot(work: Path, resume: Optional[str]) -> Optional[Path]:
    """resume 'auto' -> the newest readable epoch_N.ckpt of `work` (None if there is none); a path -> that file."""
    if resume == "auto":
        return latest_valid_snapshot(work)
    if resume:
        snapshot = Path(resume)
        check_file(snapshot, "snapshot to resume from")
        return snapshot
    return None


RUN_FILES = ("log.json", "train.log", "run.json", "loss_curve.png")   # what a run writes beside its checkpoints


def earlier_checkpoints(work: Path) -> List[Path]:
    """The snapshots and best checkpoints an earlier run left in `work`."""
    if not work.is_dir():
        return []
    best = best_name_re()
    return sorted(p for p in work.iterdir() if SNAPSHOT_RE.match(p.name) or best.match(p.name))


def check_new_run(work: Path, *, resume: Optional[str], force: bool) -> List[Path]:
    """A new run (no snapshot to resume) in a work dir whose checkpoints an earlier run left: SolovError without
    --force (its snapshots would be pruned as newer than the new run's, its best checkpoint replaced). Logs alone
    (a run stopped before its first snapshot: relaunched, it starts again) are no reason. With --force: the
    checkpoints and logs to delete before the new run writes any."""
    found = earlier_checkpoints(work)
    if found and not force:
        names = listing([p.name for p in found], limit=4)
        how = ("none is a readable snapshot to resume" if resume == "auto" else "--resume auto continues it")
        raise SolovError(f"{work}: --work-dir holds an earlier run's checkpoints ({names}): {how}; --force starts a "
                         f"new run there (deleting them and its logs), or choose another --work-dir")
    return (found + [work / name for name in RUN_FILES if (work / name).is_file()]) if force else []


def check_resume_target(work: Path, snapshot: Path, epoch: int) -> None:
    """--resume PATH (a snapshot of `epoch`): SolovError when `work` holds checkpoints the resumed run does not own,
    which it would prune or replace and which a later `--resume auto` would continue instead of it: a later
    epoch's (for a snapshot of this work dir), or any (for a snapshot from elsewhere)."""
    inside = same_file(snapshot.parent, work)   # through symlinks: a linked snapshot is still this dir's
    found = [p for p in earlier_checkpoints(work)
             if not same_file(p, snapshot) and (not inside or checkpoint_epoch(p.name) > epoch)]
    if found:
        whose = f"later epochs than {epoch}" if inside else "another run"
        how = "--resume auto continues the newest" if inside else "choose another --work-dir"
        raise SolovError(f"{snapshot}: --work-dir {work} holds checkpoints of {whose} "
                         f"({listing([p.name for p in found], limit=4)}), which resuming this snapshot there would "
                         f"prune or replace: move them away, or {how}")


def check_load_from(load_from: Optional[str], work: Path) -> None:
    """--load-from must be a file, and not one this run writes or prunes: an epoch_N.ckpt or best_*.ckpt of its
    work dir."""
    if not load_from:
        return
    check_file(load_from, "--load-from checkpoint")   # here, where a file one node lacks stops every rank
    if not work.is_dir():
        return
    path = Path(load_from)
    if same_file(path.parent, work) and (SNAPSHOT_RE.match(path.name) or path.name.startswith("best_")):
        raise SolovError(f"{load_from}: --load-from is a snapshot of the work dir {work}, which this run writes and "
                         f"prunes: an output never replaces an input; copy it elsewhere (or continue it with --resume)")
