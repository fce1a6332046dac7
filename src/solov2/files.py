"""Writing the user's files safely: refuse to replace one without --force, and never leave a half-written one.

The outputs a user names (pictures, results.json, converted checkpoints, rank tables) are checked with
`check_writable` before the long work; those and the work-dir files that are replaced whole (snapshots, run.json,
metrics.json) are written through `atomic_write`. Append-only logs (train.log, log.json) are not.
"""
import errno
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Tuple

from solov2.errors import SolovError


def already_exists(path, detail: str = "") -> SolovError:
    """The one message for an output that exists: '<path>: already exists[ detail]; pass --force to overwrite it'."""
    return SolovError(f"{path}: already exists{detail}; pass --force to overwrite it")


def check_writable(path, force: bool) -> None:
    """Before any long work: `path` may be written (absent, or --force), and its folder exists and is writable."""
    path = Path(path).absolute()
    if path.is_dir():   # os.replace cannot put a file there, even with --force
        raise SolovError(f"{path}: is a folder, not a file")
    if path.exists() and not force:
        raise already_exists(path)
    folder = path.parent
    if not folder.is_dir():
        raise SolovError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK):
        raise SolovError(f"{folder}: output folder is not writable")


def same_file(a, b) -> bool:
    """True if paths `a` and `b` name one existing file: through symlinks, '..' and hard links (device and inode)."""
    ident = _identity(a)
    return ident is not None and ident == _identity(b)


def _identity(path) -> Optional[Tuple[int, int]]:
    """(device, inode) of the file `path` names through symlinks; None if it names none (missing, a loop)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):   # an output not yet written cannot be an input
        return None
    return st.st_dev, st.st_ino


def check_not_an_input(outputs: Iterable, inputs: Mapping[str, object]) -> None:
    """Before any work: no output (a path about to be written) is one of the command's inputs: {what: path, None
    for an absent one, or a list of paths}. Compared by device and inode, so symlinks, '..' and hard links count,
    in one stat per path. Never allowed, even with --force: --force only ever replaces an earlier output."""
    known = {}
    for what, paths in inputs.items():
        for path in (paths if isinstance(paths, (list, tuple)) else [paths]):
            ident = _identity(path) if path is not None else None
            if ident is not None:
                known.setdefault(ident, (what, path))
    for out in outputs:
        hit = known.get(_identity(out))
        if hit is not None:
            raise SolovError(f"{out}: is the input {hit[0]} ({hit[1]}); an output never replaces an input, even "
                             f"with --force: choose another name")


UMASK = "umask"  # atomic_write mode: what a plain open() would have created (0666 less the process umask)


def _create_temporary(path: Path) -> Path:
    """A new empty file beside `path` (same suffix), created with 0666 so that the OS applies the umask.

    Not mkstemp (always 0600) plus reading the umask: os.umask can only be read by setting it, which would briefly
    change it for every thread of the process (MindSpore's own threads create files too).
    """
    for _ in range(100):
        tmp = path.parent.absolute() / f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


@contextmanager
def atomic_write(path, mode=UMASK) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends normally it replaces `path` in one step.

    The temporary file is in the same folder (same file system, so os.replace is atomic) and ends in the same
    suffix (cv2 picks the image encoder and MindSpore the checkpoint format by it). If the block raises, the
    temporary file is removed and `path` is untouched. mode: permissions of the result: UMASK (those of a plain
    open()), an int, or None to keep what the writer set.
    """
    path = Path(path)
    tmp = _create_temporary(path)
    try:
        yield tmp
        if mode is not None and mode != UMASK:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def restored_on_failure(path) -> Iterator[Callable[[], None]]:
    """For a small file (a sidecar) the block replaces before its last step, which may fail (the rename of the file
    it describes; Ctrl-C). The block calls the yielded function just before it writes `path`; on any failure after
    that, the content `path` had then is put back (or `path` removed if it had none). Never a new sidecar beside an
    earlier model, nor an earlier model without its sidecar; a failure before the call touches nothing (e.g. the
    check that finds another run's sidecar)."""
    path = Path(path)
    earlier: list = []

    def replacing() -> None:
        earlier.append(path.read_bytes() if path.is_file() else None)
    try:
        yield replacing
    except BaseException:
        if earlier and (path.read_bytes() if path.is_file() else None) != earlier[0]:
            if earlier[0] is None:
                path.unlink()
            else:
                with atomic_write(path) as tmp:
                    tmp.write_bytes(earlier[0])
        raise


def _json_default(o):
    """NumPy scalars and arrays (e.g. category ids and AP values from pycocotools) as plain JSON values."""
    import numpy as np  # imported here: hccl_tools.py writes JSON on bare hosts
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def write_json_atomic(path, obj, indent: Optional[int] = None, mode=0o644) -> None:
    """`obj` as JSON in `path`; readers never see a partial file (fsync before the rename). Mode 0644 by default:
    results and metrics are meant to be shared (as before the atomic writer existed, for results.json)."""
    with atomic_write(path, mode) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, default=_json_default, indent=indent)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())


def write_image(path, img, params=()) -> None:
    """A picture (img: BGR uint8 (H, W, 3)) in `path`, encoded by its extension; an interrupted run leaves no half file.

    Encoded in memory, then written by Python: cv2.imwrite only returns False on a full disk, which it would not tell
    from an extension it cannot encode."""
    import cv2  # not needed by the tools that only write JSON (hccl_tools.py runs on bare hosts)
    try:
        ok, data = cv2.imencode(Path(path).suffix or ".", img, list(params))
    except cv2.error:  # OpenCV 4.10 raises for an extension it has no encoder for
        ok = False
    if not ok:
        raise SolovError(f"{path}: cannot write an image with this extension")
    try:
        with atomic_write(path) as tmp:
            tmp.write_bytes(data.tobytes())
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SolovError(f"{path}: no space left on the disk (nothing half-written was left behind)") from None
        raise
