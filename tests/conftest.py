"""Shared test helpers: where ../shared is, MindSpore execution modes, the reference light-R18 model."""
import os
import re
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SOLOV2_SHARED", REPO.parent / "shared"))
REF = SHARED / "fixtures" / "reference"

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


def pytest_configure(config):
    if not REF.is_dir():
        raise pytest.UsageError(f"test data not found: {REF} (set SOLOV2_SHARED to the shared/ folder)")
    ms.set_device("CPU")


@pytest.fixture(params=list(MODES))
def ms_mode(request):
    """Run the test once in GRAPH_MODE and once in PYNATIVE_MODE."""
    old = ms.get_context("mode")
    ms.set_context(mode=MODES[request.param])
    yield request.param
    ms.set_context(mode=old)


def official_to_ms_name(key: str) -> str:
    """Official torch key -> MindSpore parameter name (BN/GN weight/bias/running stats renames)."""
    key = re.sub(r"\.(bn\d*|downsample\.1|gn)\.weight$", r".\1.gamma", key)
    key = re.sub(r"\.(bn\d*|downsample\.1|gn)\.bias$", r".\1.beta", key)
    return key.replace(".running_mean", ".moving_mean").replace(".running_var", ".moving_variance")


def reference_config():
    """The light-448-R18 config with 23 classes that produced the reference fixtures."""
    from solov2.config import load_config
    return load_config(REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x_trashcan.py")


def load_reference_weights(net) -> None:
    """Load fixtures/reference/weights_light_r18_c23.npz (fp16-exact values) into `net`, strictly."""
    npz = np.load(REF / "weights_light_r18_c23.npz")
    params = {official_to_ms_name(k): ms.Parameter(ms.Tensor(npz[k].astype(np.float32)), name=official_to_ms_name(k))
              for k in npz.files}
    not_loaded, unused = ms.load_param_into_net(net, params, strict_load=True)
    assert not not_loaded and not unused, (not_loaded, unused)


@pytest.fixture(scope="session")
def reference_net():
    from solov2.models import build_model
    net = build_model(reference_config())
    load_reference_weights(net)
    net.set_train(False)
    return net
