"""The CPU kind and the oneDNN instruction-set cap, without MindSpore: the exported-model runtimes use them too."""
import contextlib
import os
import platform
import sys
from typing import Optional

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


@contextlib.contextmanager
def onednn_isa_unset():
    """ONEDNN_MAX_CPU_ISA removed from the environment inside the block, put back after it. OpenVINO compiles its
    networks with a oneDNN of its own that reads the same variable: capped at AVX2 on an AVX-512 CPU it picked
    2.3x slower kernels and crashed (segmentation fault) at some input sizes (AMD EPYC Zen 4, OpenVINO 2026.4),
    uncapped it matches onnxruntime. MindSpore's oneDNN has read the variable at its first kernel or will read it
    after the block, so the cap keeps applying to MindSpore."""
    value = os.environ.pop(ONEDNN_ISA_VAR, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[ONEDNN_ISA_VAR] = value
