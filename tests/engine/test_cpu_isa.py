"""The CPU convolution trap: oneDNN must never run a reference ('ref') convolution kernel.

On AVX-512 CPUs MindSpore 2.10's oneDNN picks `jit_uni_ncsp:conv+ref:any` (0.5-0.9 GFLOP/s) for NCHW float32
convolutions unless capped at AVX2. A timing test would pass on a fast machine whatever we do, so this reads the
implementation oneDNN actually chose (ONEDNN_VERBOSE=1) in a fresh process, forward and backward.
"""
import os
import subprocess
import sys

import pytest

from conftest import REPO
from solov2.cpu import ONEDNN_ISA_VAR, cpu_kind

# A conv forward + backward through the project's own entry point (set_runtime), in a fresh process so that the
# ISA decision is made there, as in every CLI.
PROBE = r"""
import sys
import numpy as np
import mindspore as ms
from solov2.engine.runtime import set_runtime
set_runtime("CPU", sys.argv[1])


class Loss(ms.nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv = ms.nn.Conv2d(64, 64, 3, pad_mode="pad", padding=1, has_bias=False)

    def construct(self, x):
        return (self.conv(x) ** 2).sum()  # non-linear: GRAPH mode keeps the forward conv


net = Loss()
x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 64, 24, 24)).astype(np.float32))
ms.grad(net, grad_position=0, weights=net.trainable_params())(x)[1][0].asnumpy()
"""


def conv_implementations(tmp_path, mode: str, env_isa=None) -> list:
    """oneDNN implementation names of every executed convolution primitive in a fresh probe process."""
    probe = tmp_path / "probe.py"  # GRAPH mode compiles from source, so the probe must be a file
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_ISA_VAR}
    if env_isa is not None:
        env[ONEDNN_ISA_VAR] = env_isa
    env.update(ONEDNN_VERBOSE="1", PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, str(probe), mode], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    # onednn_verbose,v1,primitive,exec,cpu,convolution,<implementation>,<prop_kind>,...
    rows = [line.split(",") for line in r.stdout.splitlines() if line.startswith("onednn_verbose")]
    impls = [row[6] for row in rows if len(row) > 7 and row[3] == "exec" and row[5] == "convolution"]
    kinds = {row[7] for row in rows if len(row) > 7 and row[3] == "exec" and row[5] == "convolution"}
    assert {"backward_data", "backward_weights"} <= kinds and kinds & {"forward_training", "forward_inference"}, kinds
    assert impls, "the probe ran no oneDNN convolution (did ONEDNN_VERBOSE change its format?)"
    return impls


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_set_runtime_avoids_reference_convolutions(tmp_path, mode):
    impls = conv_implementations(tmp_path, mode)
    assert not [i for i in impls if "ref" in i], f"{cpu_kind()}: reference convolution kernels chosen: {impls}"


def test_uncapped_oneDNN_is_caught_on_avx512(tmp_path):
    """The control: with the cap turned off (ONEDNN_MAX_CPU_ISA=ALL), the check above must see a 'ref' kernel."""
    if "AVX-512" not in cpu_kind():
        pytest.skip(f"{cpu_kind()}: oneDNN's default path is already fast here; the control needs AVX-512")
    impls = conv_implementations(tmp_path, "pynative", env_isa="ALL")
    assert [i for i in impls if "ref" in i], impls


def test_user_setting_wins(monkeypatch):
    from solov2.cpu import cap_cpu_isa
    monkeypatch.setenv(ONEDNN_ISA_VAR, "AVX")
    assert cap_cpu_isa() is None and os.environ[ONEDNN_ISA_VAR] == "AVX"


def test_suite_itself_runs_capped():
    """conftest caps the in-process models too (they bypass set_runtime)."""
    if "x86_64" in cpu_kind():
        assert os.environ.get(ONEDNN_ISA_VAR), "conftest did not cap oneDNN"

