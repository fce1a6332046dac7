"""MindSpore checkpoints: strict loading by name, the converter's sidecar, atomic writing, and a MindSpore 2.10
workaround (its memory check ignores the page cache). Used by inference, training snapshots and the converter."""
import errno
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional

import mindspore as ms
import numpy as np

from solov2.errors import SolovError, check_file, failure_line, first_line
from solov2.files import atomic_write


def _mem_available() -> Optional[int]:
    """Linux MemAvailable (free memory + reclaimable page cache) in bytes; None where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextmanager
def _page_cache_counts_as_available():
    """Work around a MindSpore 2.10 check that refuses to read a .ckpt larger than *free* memory.

    `load_checkpoint` compares the file size with os.sysconf('SC_AVPHYS_PAGES') (MemFree), which leaves out the
    page cache. On a training machine the cache soon holds most of the RAM (dataset images, the snapshots just
    written), so a 217 MB light-R18 snapshot was refused with 23 GB available (measured here), and `--resume auto`
    would have skipped it as unreadable. While we load, MindSpore's probe also counts MemAvailable.
    """
    from mindspore.train import serialization
    probe = getattr(serialization, "_get_available_memory", None)
    if probe is None:  # another MindSpore version: nothing to patch
        yield
        return

    def available():
        values = [v for v in (probe(), _mem_available()) if v is not None]
        return max(values) if values else None

    serialization._get_available_memory = available
    try:
        yield
    finally:
        serialization._get_available_memory = probe


def save_to_temporary(tmp: Path, items, append_dict: Optional[dict] = None) -> None:
    """`ms.save_checkpoint` into the temporary file of an `atomic_write`, leaving none of MindSpore's own files.

    MindSpore writes X.ckpt through its own temporary X.tmp, which stays on a full disk (seen here): removed.
    """
    try:
        ms.save_checkpoint(items, str(tmp), append_dict=append_dict)
    finally:
        own_tmp = Path(tmp).with_suffix(".tmp")
        if own_tmp.exists():
            own_tmp.unlink()


def write_checkpoint(path, items, append_dict: Optional[dict] = None) -> None:
    """`ms.save_checkpoint(items, ...)` into `path` atomically; a failure (full disk) leaves nothing behind and
    raises SolovError naming `path`. MindSpore makes the file read-only for its owner; that mode is kept."""
    try:
        with atomic_write(path, mode=None) as tmp:
            save_to_temporary(tmp, items, append_dict)
    except (OSError, RuntimeError, TypeError, ValueError) as e:
        raise save_failure(path, e) from None


def save_failure(path, e: BaseException) -> SolovError:
    """A SolovError for a checkpoint that could not be written, naming the full disk when that is the cause."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return SolovError(f"{path}: no space left on the disk (nothing was written; free space and run again)")
    return SolovError(f"{path}: could not write the checkpoint ({failure_line(e)})")


def load_checkpoint(path, **kwargs) -> Dict[str, ms.Parameter]:
    """ms.load_checkpoint(path, **kwargs), with the page cache counted as available memory (see above)."""
    with _page_cache_counts_as_available():
        return ms.load_checkpoint(str(path), **kwargs)


def read_checkpoint(path, what: str = "checkpoint") -> Dict[str, ms.Parameter]:
    """Read a MindSpore .ckpt; missing or unreadable files raise SolovError naming the file (what: 'snapshot')."""
    path = Path(path)
    check_file(path, f"{what} file")
    try:
        return load_checkpoint(path)
    except (ValueError, RuntimeError, TypeError, OSError) as e:
        raise SolovError(f"{path}: not a readable MindSpore {what} ({first_line(e)})") from None


def shape_mismatches(own: Dict[str, ms.Parameter], ckpt: Dict[str, ms.Parameter]) -> List[str]:
    """Names present in both whose shapes differ (own: the model's parameters by name)."""
    return [k for k, p in own.items() if k in ckpt and tuple(ckpt[k].shape) != tuple(p.shape)]


def shape_mismatch_error(path, names: List[str], own, ckpt, what: str, hint: str) -> SolovError:
    """'<path>: N parameter shape(s) differ from the config's model, e.g. <name>: <what> (a) vs model (b) (hint)'."""
    k = names[0]
    return SolovError(f"{path}: {len(names)} parameter shape(s) differ from the config's model, e.g. {k}: "
                      f"{what} {tuple(ckpt[k].shape)} vs model {tuple(own[k].shape)} ({hint})")


def load_weights(net, path, skip_mismatched: bool = False) -> List[str]:
    """Load a checkpoint into `net` strictly by name.

    Missing or unexpected parameters and shape mismatches raise SolovError naming them. With
    skip_mismatched=True (fine-tuning from a COCO checkpoint), parameters whose shape differs keep their fresh
    initialisation and are returned, so the caller can log them. Extra non-model entries (optimizer state,
    epoch counters) are ignored.
    """
    ckpt = read_checkpoint(path)
    own = {p.name: p for p in net.get_parameters()}
    missing = [k for k in own if k not in ckpt]
    if missing:
        raise SolovError(f"{path}: {len(missing)} model parameter(s) missing from the checkpoint, e.g. "
                         f"{', '.join(missing[:3])} (is it a SOLOv2 checkpoint for this config?)")
    mismatched = shape_mismatches(own, ckpt)
    if mismatched and not skip_mismatched:
        raise shape_mismatch_error(path, mismatched, own, ckpt, "checkpoint", "another architecture or class count?")
    values = {k: ckpt[k].asnumpy().astype(np.float32) for k in own if k not in mismatched}
    check_finite(path, values)
    for k, v in values.items():
        own[k].set_data(ms.Tensor(v))
    return mismatched


def check_finite(path, values: Dict[str, np.ndarray]) -> None:
    """SolovError naming the first parameter (and the file) that holds inf or NaN: such weights would draw confident
    nonsense or nothing at all, and training would blame the learning rate after its first step."""
    for name, v in values.items():
        if not np.isfinite(v).all():
            kinds = [k for k, bad in (("NaN", np.isnan(v).any()), ("inf", np.isinf(v).any())) if bad]
            raise SolovError(f"{path}: parameter {name} holds non-finite values ({' and '.join(kinds)}, "
                             f"{int((~np.isfinite(v)).sum())} of {v.size}): the weights are damaged or diverged")


def sidecar_path(ckpt_path) -> Path:
    """`<ckpt>.json`: what weight_convert.py stores beside a converted checkpoint (class names, arch, source)."""
    return Path(str(ckpt_path) + ".json")


def checkpoint_class_names(path) -> Optional[List[str]]:
    """Class names stored in the sidecar of a converted checkpoint, or None."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        names = json.loads(side.read_text()).get("classes")
    except (json.JSONDecodeError, OSError, AttributeError):
        return None
    return list(names) if names else None
