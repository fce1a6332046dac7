"""Process-level setup shared by the command-line tools: errors, MindSpore context, checkpoint loading."""
import errno
import json
import os
import platform
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional

import mindspore as ms
import numpy as np

from .errors import SolovError, first_line


DEBUG_VAR = "SOLOV2_DEBUG"


def check_writable(path, force: bool) -> None:
    """Before any long work: `path` may be written (absent, or --force), and its folder exists and is writable."""
    path = Path(path)
    if path.exists() and not force:
        raise SolovError(f"{path}: already exists; pass --force to overwrite it")
    folder = path.parent
    if not folder.is_dir():
        raise SolovError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK):
        raise SolovError(f"{folder}: output folder is not writable")


def failure_line(e: BaseException) -> str:
    """One line for an expected failure: our SolovError as is; an OSError with its file and the system's reason
    (`<file>: No space left on device`); a library error (MindSpore's ValueError/RuntimeError, cv2.error) by its
    first line."""
    if isinstance(e, SolovError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        where = e.filename if e.filename is not None else "I/O"
        return f"{where}: {e.strerror}" + (f" (-> {e.filename2})" if e.filename2 else "")
    return f"{type(e).__name__}: {first_line(e)}"


def cli_main(fn: Callable[[], Optional[int]]) -> None:
    """Run a CLI body; expected failures become one line `error: <message>` on stderr and exit code 2.

    Expected: SolovError (bad input we detected), OSError (missing or read-only folders, full disk), MemoryError,
    and the ValueError / RuntimeError / cv2.error that MindSpore and OpenCV raise for unusable settings (e.g.
    `--device_target Ascend` on a CPU-only build). SOLOV2_DEBUG=1 re-raises them with the traceback; other
    exceptions (bugs) always keep theirs.
    """
    import cv2
    expected = (SolovError, OSError, MemoryError, ValueError, RuntimeError, cv2.error)
    try:
        rc = fn()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except expected as e:
        if os.environ.get(DEBUG_VAR) == "1":
            raise
        hint = "" if isinstance(e, SolovError) else f" (set {DEBUG_VAR}=1 for the traceback)"
        print(f"error: {failure_line(e)}{hint}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rc or 0)


ONEDNN_ISA_VAR = "ONEDNN_MAX_CPU_ISA"
ONEDNN_ISA_CAP = "AVX2"


def cpu_kind() -> str:
    """'x86_64 AVX-512' / 'x86_64 AVX2' / the machine name: what decides MindSpore's CPU convolution speed."""
    machine = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if machine in ("x86_64", "AMD64"):
        return f"{machine} {'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'}"
    return machine


def cap_cpu_isa() -> Optional[str]:
    """Cap oneDNN at AVX2 on x86 CPUs, unless the user set ONEDNN_MAX_CPU_ISA; returns the cap set (or None).

    Why: on CPUs with AVX-512 (Intel Xeon, AMD Zen 4), MindSpore 2.10's oneDNN runs NCHW float32 convolutions
    as `jit_uni_ncsp:conv+ref:any`, a reference loop at 0.5-0.9 GFLOP/s (measured here); capped at AVX2 it picks
    `gemm:jit` at 65-170 GFLOP/s, with the same results to float32 rounding. oneDNN reads the variable when it
    first dispatches, so this must run before the first MindSpore kernel; the environment is inherited by msrun
    workers and subprocesses. Set ONEDNN_MAX_CPU_ISA=ALL to keep oneDNN's own choice.
    """
    if platform.machine() not in ("x86_64", "AMD64") or ONEDNN_ISA_VAR in os.environ:
        return None
    os.environ[ONEDNN_ISA_VAR] = ONEDNN_ISA_CAP
    kind = cpu_kind()
    if "AVX-512" in kind:
        print(f"solov2: {kind} CPU: capping oneDNN at {ONEDNN_ISA_CAP} ({ONEDNN_ISA_VAR}={ONEDNN_ISA_CAP}), "
              f"its AVX-512 convolution path is 100x slower; set {ONEDNN_ISA_VAR}=ALL to turn this off",
              file=sys.stderr)
    return ONEDNN_ISA_CAP


def set_runtime(device_target: str = "CPU", mode: str = "graph", device_id: Optional[int] = None) -> None:
    """Select the device and execution mode ('graph' = GRAPH_MODE, 'pynative' = PYNATIVE_MODE).

    On CPU, oneDNN is first capped at AVX2 (see `cap_cpu_isa`). On Ascend, operators are kept in float32
    ('must_keep_origin_dtype'); the default would let convolutions run in float16, which breaks the 1e-4 parity
    with the official model.
    """
    if mode not in ("graph", "pynative"):
        raise SolovError(f"--mode must be 'graph' or 'pynative', got {mode!r}")
    if device_target not in ("CPU", "GPU", "Ascend"):
        raise SolovError(f"--device_target must be CPU, GPU or Ascend, got {device_target!r}")
    if device_target == "CPU":
        cap_cpu_isa()
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if device_id is None:
        device_id = int(os.environ.get("DEVICE_ID", 0))
    try:
        ms.set_device(device_target, device_id)
    except (RuntimeError, ValueError) as e:  # e.g. GPU or Ascend asked of a CPU-only MindSpore build
        raise SolovError(f"--device_target {device_target}: not usable with this MindSpore ({first_line(e)})") \
            from None
    if device_target == "Ascend":
        try:
            from mindspore.device_context.ascend.op_precision import precision_mode
            precision_mode("must_keep_origin_dtype")
        except (ImportError, AttributeError, RuntimeError):  # older MindSpore: the ascend_config context key
            ms.set_context(ascend_config={"precision_mode": "must_keep_origin_dtype"})


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


def partial_checkpoint_files(ckpt_path) -> List[Path]:
    """The files a failed `ms.save_checkpoint(..., ckpt_path)` can leave: the path itself and MindSpore's own
    temporary `<stem>.tmp` beside it (it writes X.ckpt through X.tmp; on a full disk that file stays, seen here)."""
    p = Path(ckpt_path)
    return [p, p.with_suffix(".tmp")]


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
    if not path.is_file():
        raise SolovError(f"{path}: no such {what} file")
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
    for k, p in own.items():
        if k not in mismatched:
            p.set_data(ms.Tensor(ckpt[k].asnumpy().astype(np.float32)))
    return mismatched


def checkpoint_class_names(path) -> Optional[List[str]]:
    """Class names stored beside a converted checkpoint (`<ckpt>.json`, written by weight_convert.py)."""
    side = Path(str(path) + ".json")
    if not side.is_file():
        return None
    try:
        names = json.loads(side.read_text()).get("classes")
    except (json.JSONDecodeError, OSError, AttributeError):
        return None
    return list(names) if names else None
