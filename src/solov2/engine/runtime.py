"""Process-level MindSpore setup: the CPU convolution cap, device and mode, distributed initialisation.

MindSpore is imported by the functions that use it, not by this module: the commands import `RuntimeFlags` while
they parse, and a bad input found before the model is built is reported without MindSpore's import (~2 s).
"""
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from solov2.cpu import cap_cpu_isa
from solov2.errors import SolovError, first_line, not_a_file

MODES = ("graph", "pynative")


def set_mode(mode: str) -> None:
    """'graph' = GRAPH_MODE, 'pynative' = PYNATIVE_MODE (the benchmark switches between them in one process)."""
    if mode not in MODES:
        raise SolovError(f"--mode must be 'graph' or 'pynative', got {mode!r}")
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)


PRECISIONS = ("parity", "fast")


def ascend_precision(precision: str) -> dict:
    """The Ascend operator-precision settings of a precision mode ('parity' or 'fast').

    Both keep every operator in the type the graph gives it ('must_keep_origin_dtype': MindSpore's default on
    Atlas training products is 'force_fp16', i.e. float16 convolutions behind the user's back); float16 is chosen
    explicitly, by the amp level. They differ in HF32 (float32 with a 10-bit mantissa on the cube units), which
    CANN enables for float32 convolutions by default: 'parity' turns it off for convolutions and matmuls (the 1e-4
    agreement with the official model), 'fast' turns it on for both (training speed).
    """
    if precision not in PRECISIONS:
        raise SolovError(f"--precision must be 'parity' or 'fast', got {precision!r}")
    hf32 = precision == "fast"
    return {"precision_mode": "must_keep_origin_dtype", "conv_allow_hf32": hf32, "matmul_allow_hf32": hf32}


def set_ascend_precision(precision: str) -> None:
    """Apply `ascend_precision(precision)` (before the first Ascend kernel runs)."""
    settings = ascend_precision(precision)
    try:
        from mindspore.device_context.ascend import op_precision
    except ImportError:  # MindSpore before 2.5: the ascend_config context key
        import mindspore as ms
        ms.set_context(ascend_config=settings)
        return
    for name, value in settings.items():
        try:
            getattr(op_precision, name)(value)
        except (RuntimeError, ValueError) as e:  # e.g. "can not be set repeatedly" in one process
            raise SolovError(f"--precision {precision}: could not set {name}={value} ({first_line(e)})") from None


def env_int(name: str, low: int, high: int) -> Optional[int]:
    """The integer in environment variable `name` (None if unset or empty); SolovError naming the variable unless it
    is an integer in [low, high]: MindSpore would otherwise abort the process on it, naming nothing."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise SolovError(f"environment variable {name}={text!r}: must be an integer in [{low}, {high}]")
    return value


def check_environment() -> None:
    """The environment variables of distributed runs, checked before MindSpore reads them: DEVICE_ID, RANK_ID <
    RANK_SIZE (RANK_TABLE_FILE by `init_distributed`, SOLOV2_DCN_IMPL where models/dcn.py reads it)."""
    env_int("DEVICE_ID", 0, 4095)
    rank, size = env_int("RANK_ID", 0, 2 ** 20), env_int("RANK_SIZE", 1, 2 ** 20)
    if rank is not None and size is not None and rank >= size:
        raise SolovError(f"environment variables RANK_ID={rank} and RANK_SIZE={size}: the rank must be below the size")


def set_runtime(device_target: str = "CPU", mode: str = "graph", device_id: Optional[int] = None,
                deterministic: bool = False, precision: str = "parity") -> None:
    """Select the device and execution mode, once per process, before any cell is built.

    The only place where the package sets MindSpore's context. On CPU, oneDNN is first capped at AVX2 (see
    `cap_cpu_isa`). On Ascend, `precision` picks the operator precision (`ascend_precision`: 'parity' for
    inference and checks against the official model, 'fast' for training); it has no effect on CPU.
    deterministic: kernels with a fixed reduction order (bitwise-reproducible training runs, slower).
    """
    if device_target not in ("CPU", "GPU", "Ascend"):
        raise SolovError(f"--device_target must be CPU, GPU or Ascend, got {device_target!r}")
    ascend_precision(precision)  # validate before anything is set
    check_environment()
    if device_target == "CPU":
        cap_cpu_isa()
    set_mode(mode)
    import mindspore as ms
    if deterministic:
        ms.set_context(deterministic="ON")
    if device_id is None:
        device_id = env_int("DEVICE_ID", 0, 4095) or 0
    try:
        ms.set_device(device_target, device_id)
    except (RuntimeError, ValueError) as e:  # e.g. GPU or Ascend asked of a CPU-only MindSpore build
        raise SolovError(f"--device_target {device_target}: not usable with this MindSpore ({first_line(e)})") \
            from None
    if device_target == "Ascend":
        set_ascend_precision(precision)


def init_distributed(distributed: bool) -> Tuple[int, int]:
    """(rank, world). Under msrun/rank tables (or distributed=True) initialise HCCL/MCCL and data parallelism."""
    launched = "MS_ROLE" in os.environ or "RANK_TABLE_FILE" in os.environ
    if not (distributed or launched):
        return 0, 1
    if not launched:
        raise SolovError("distributed training needs a launcher: use msrun_launcher.sh (see README)")
    table = os.environ.get("RANK_TABLE_FILE")
    problem = not_a_file(table, "file") if table is not None and "MS_ROLE" not in os.environ else None
    if problem:
        raise SolovError(f"environment variable RANK_TABLE_FILE={table!r}: {problem} (a rank table from "
                         f"hccl_tools.py)")
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init
    init()
    world = get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world)
    return get_rank(), world


@dataclass(frozen=True)
class RuntimeFlags:
    """A command's MindSpore context: --device_target, --mode, --precision (and train.py's --deterministic).

    The commands parse these first and `start()` them (`set_runtime`) only once their cheap checks have passed,
    right before a network is built: a missing image or a typo in an option is one line at once.
    """
    device_target: str = "CPU"
    mode: str = "graph"
    precision: str = "parity"
    deterministic: bool = False

    def start(self) -> None:
        set_runtime(self.device_target, self.mode, deterministic=self.deterministic, precision=self.precision)
