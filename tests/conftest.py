"""Shared test helpers: where ../shared is (SHARED, the one definition), the one MindSpore mode fixture (ms_mode)
and its context manager (in_mode), the reference light-R18 model, running the root scripts (cli)."""
import collections
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SOLOV2_SHARED", REPO.parent / "shared"))
REF = SHARED / "fixtures" / "reference"
TRASHCAN_CFG = REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x_trashcan.py"

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}
# The official img_norm_cfg and Pad(size_divisor=32) of every SOLOv2 config: train_transform's keyword arguments
NORM = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), to_rgb=True, size_divisor=32)


def pytest_configure(config):
    if not REF.is_dir():
        raise pytest.UsageError(f"test data not found: {REF} (set SOLOV2_SHARED to the shared/ folder)")
    from solov2.engine.runtime import cap_cpu_isa
    cap_cpu_isa()  # before the first kernel: the suite runs its models in-process, bypassing set_runtime
    ms.set_device("CPU")


@contextlib.contextmanager
def in_mode(mode: str):
    """Run the block in MindSpore mode 'graph' or 'pynative', then restore the previous mode."""
    old = ms.get_context("mode")
    ms.set_context(mode=MODES[mode])
    try:
        yield mode
    finally:
        ms.set_context(mode=old)


@pytest.fixture(params=list(MODES))
def ms_mode(request):
    """Run the test once in GRAPH_MODE and once in PYNATIVE_MODE (the suite's one mode fixture)."""
    with in_mode(request.param) as mode:
        yield mode


def official_to_ms_name(key: str) -> str:
    """Official torch key -> MindSpore parameter name (BN/GN weight/bias/running stats renames).

    An independent oracle of the converter, on purpose: it is written from MindSpore's norm-layer parameter names
    (gamma, beta, moving_mean, moving_variance) and the official key list of the fixtures, not from
    `solov2.convert`, which handles three checkpoint layouts with its own rules. Tests that load fixture weights
    through this function and compare with the converted .ckpt would catch a wrong rename in either.
    """
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


def cli(*args, timeout=600, env=None):
    """Run a root script of the repo (`cli("run.py", ...)`) as the user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """The reference weights saved as an official mmcv checkpoint, converted by weight_convert.py."""
    import torch
    d = tmp_path_factory.mktemp("weights")
    meta = json.loads((REF / "meta.json").read_text())
    npz = np.load(REF / "weights_light_r18_c23.npz")
    sd = collections.OrderedDict(
        (k, torch.tensor(0) if k.endswith("num_batches_tracked") else torch.from_numpy(npz[k].astype(np.float32)))
        for k, _, _ in meta["key_order"])
    torch.save({"meta": meta["checkpoint_meta_suggestion"], "state_dict": sd}, d / "official.pth")
    r = cli("weight_convert.py", d / "official.pth", d / "light_r18_trashcan.ckpt", "--config", TRASHCAN_CFG)
    assert r.returncode == 0, r.stderr
    return d / "light_r18_trashcan.ckpt"


def snapshot(folder) -> dict:
    """{relative path: md5} of every file below folder."""
    import hashlib
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_bad_input(argv, folder, fragments):
    """Run the CLI `argv`: exit 2, exactly one `error:` line holding every fragment, no traceback, every file that
    was below `folder` unchanged and no new one."""
    before = snapshot(folder)
    r = cli(*argv, timeout=600)
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for f in fragments:
        assert f in errors[0], errors[0]
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in before} == before, "a pre-existing file changed"
    assert not [k for k in after if k not in before], f"stray files: {[k for k in after if k not in before]}"


def decode_rle(seg) -> np.ndarray:
    from pycocotools import mask as mask_util
    return mask_util.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


# The near-threshold rule of every comparison with the official code (see tests/models/test_parity_torch.py for the
# derivation): float32 noise may binarise a 1/4-resolution mask pixel the other way only where the reference
# probability is within NEAR of mask_thr, and such a pixel moves the maskness and the Matrix NMS IoUs, hence the
# final score, by a computable amount. The reference is therefore re-run with those pixels decided as ours decides
# them (`official_near_decided`), and scores are compared with it at 1e-4.
NEAR = 1e-4


def official_near_decided(ours_kernels, ours_mask_feat) -> list:
    """The official instances of fixtures/reference/inference_trashcan_val (results.json records: label, score,
    segmentation), re-derived from the official head outputs by the independent torch post-processing
    (tests/models/torch_solov2.py, equal to the official final scores within 1.2e-7) with the official
    near-threshold 1/4-resolution pixels binarised by our kernels (cells, E) and mask features (E, h, w)."""
    import torch
    from solov2.evaluation.results import mask_to_rle
    sys.path.insert(0, str(REPO / "tests" / "models"))
    import torch_solov2 as ts
    z = np.load(REF / "inference_trashcan_val.npz")
    test_cfg = json.loads((REF / "inference_trashcan_val.json").read_text())["test_cfg"]
    num_classes = z["cate_pred_l0"].shape[-1]
    cate = torch.cat([torch.from_numpy(z[f"cate_pred_l{i}"][0].reshape(-1, num_classes)) for i in range(5)])
    kern = torch.cat([torch.from_numpy(z[f"kernel_pred_l{i}"][0].reshape(len(z["mask_feat"][0]), -1).T)
                      for i in range(5)])
    r = ts.get_seg_single(cate, kern, torch.from_numpy(z["mask_feat"][0]), z["img_shape"], z["ori_shape"],
                          collections.namedtuple("TestCfg", test_cfg)(**test_cfg),
                          near_decided_by=(torch.from_numpy(ours_kernels), torch.from_numpy(ours_mask_feat), NEAR))
    return [dict(label=int(label), score=float(score), segmentation=mask_to_rle(mask.numpy()))
            for label, score, mask in zip(r["labels"], r["scores"], r["masks"])]


def match_instances(expected, got, iou_min=0.999, score_tol=1e-4):
    """Pair every expected instance (results.json records) with an unused one of the same label in `got`.

    Asserts the same count, mask IoU >= iou_min and |score difference| <= score_tol; returns the pairs. Against
    the official code, `expected` comes from `official_near_decided` (the near-threshold rule above).
    """
    assert len(got) == len(expected), (len(got), len(expected))
    masks = [decode_rle(o["segmentation"]) for o in got]
    used, pairs = set(), []
    for k, inst in enumerate(expected):
        m = decode_rle(inst["segmentation"])
        best, best_iou = None, -1.0
        for j, o in enumerate(got):
            if j in used or o["label"] != inst["label"]:
                continue
            union = (m | masks[j]).sum()
            iou = (m & masks[j]).sum() / union if union else 1.0  # two empty masks (tiny on a small image) agree
            if iou > best_iou:
                best, best_iou = j, iou
        assert best is not None and best_iou >= iou_min, (k, inst.get("file_name"), best_iou)
        assert abs(got[best]["score"] - inst["score"]) <= score_tol, (k, got[best]["score"], inst["score"])
        used.add(best)
        pairs.append((inst, got[best]))
    return pairs


@contextlib.contextmanager
def small_tmpfs(path, options="size=1m"):
    """Mount a tmpfs (e.g. 'size=1m' for a full disk, 'size=1m,ro' for a read-only one) at the new folder `path`
    for the block; skips the test where mounting is not allowed (it needs root)."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
