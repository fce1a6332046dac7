"""The training work dir as one run's own: a lock that refuses a second run, and the removal of the temporary files
that an interrupted save of an earlier run left behind."""
import errno
import fcntl
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional

from solov2.errors import SolovError

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
