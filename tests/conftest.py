"""Shared test helpers: where ../shared is (SHARED, the one definition), the one MindSpore mode fixture (ms_mode)
and its context manager (in_mode), the reference light-R18 model, running the root scripts (cli)."""
import collections
import contextlib
import json
import os
import re
import shutil
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
DCN_CFG = REPO / "configs" / "solov2" / "solov2_light_512_dcn_r50_fpn_8gpu_3x.py"
R50_CFG = REPO / "configs" / "solov2" / "solov2_r50_fpn_8gpu_3x.py"
MINI = SHARED / "datasets" / "trashcan_mini"
VAL_ANN = MINI / "annotations" / "instances_val_trashcan.json"

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}
# The official img_norm_cfg and Pad(size_divisor=32) of every SOLOv2 config: train_transform's keyword arguments
NORM = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), to_rgb=True, size_divisor=32)


def pytest_configure(config):
    if not REF.is_dir():
        raise pytest.UsageError(f"test data not found: {REF} (set SOLOV2_SHARED to the shared/ folder)")
    from solov2.cpu import cap_cpu_isa
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


def official_name_of(ms_name: str) -> str:
    """MindSpore parameter name -> official torch key: the naming contract inverted (norm-layer suffixes)."""
    for ms_suffix, pt_suffix in ((".gamma", ".weight"), (".beta", ".bias"), (".moving_mean", ".running_mean"),
                                 (".moving_variance", ".running_var")):
        if ms_name.endswith(ms_suffix):
            return ms_name[: -len(ms_suffix)] + pt_suffix
    return ms_name


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
    from solov2.models.solov2 import build_model
    net = build_model(reference_config())
    load_reference_weights(net)
    net.set_train(False)
    return net


# For msrun jobs that are meant to fail: with a crashed worker, msrun ends the job only when its scheduler takes the
# worker for dead, after the node timeout (MS_NODE_TIMEOUT, 30 s by default). 10 s ends such a test 20 s sooner and
# still leaves a worker busy compiling alive: heartbeats have their own thread. The CPU collectives' timeout falls
# back to MS_NODE_TIMEOUT when MS_CPU_COMM_OP_TIMEOUT is unset (MindSpore's collective_ops_impl.h): kept at its 30 s.
FAILING_JOB_ENV = {"MS_NODE_TIMEOUT": "10", "MS_CPU_COMM_OP_TIMEOUT": "30"}


def cli(*args, timeout=600, env=None):
    """Run a root script of the repo (`cli("run.py", ...)`) as the user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


# Runs a root script as `python script ...` would, then says on stderr whether MindSpore was imported.
IMPORT_PROBE = ("import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
                "finally:\n    print('mindspore imported:', 'mindspore' in sys.modules, file=sys.stderr)")


def cli_probing_imports(*args, timeout=600):
    """`cli(*args)` whose stderr ends with `mindspore imported: True|False` (MindSpore's import alone takes ~2 s; a
    bad input, and an .onnx model, need none)."""
    return cli("-c", IMPORT_PROBE, *args, timeout=timeout)


def run_train(work, *extra, epochs=2, images=4, scale="(256,160)", check=True, more=(), config=TRASHCAN_CFG):
    """train.py on the first `images` TrashCan training images, 2 per step, at `scale`, logging every step."""
    r = cli("train.py", "--config", config, "--work-dir", work, *extra, "--cfg-options",
            f"data.train.ann_file={MINI}/annotations/instances_train_trashcan.json",
            f"data.train.img_prefix={MINI}/train/", f"data.train.max_images={images}", "data.imgs_per_gpu=2",
            f"total_epochs={epochs}", f"data.train.pipeline.2.img_scale=[{scale}]", "log_config.interval=1", *more,
            timeout=900)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory):
    """A function dst -> dst: a copy of one work dir of `run_train(..., "--seed", "3", "--mode", "pynative",
    epochs=1, images=2)` (light-R18 TrashCan from its initial weights; epoch_1.ckpt after 1 step, its logs),
    trained once per session for the tests that only need an earlier run's work dir (each changes its own copy)."""
    work = tmp_path_factory.mktemp("one_epoch") / "work"
    run_train(work, "--seed", "3", "--mode", "pynative", epochs=1, images=2)

    def copy_to(dst):
        shutil.copytree(work, dst)
        return dst
    return copy_to


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


def write_video(path, frames):
    """An MJPG .avi of the BGR `frames` (uint8, one size) at 5 frames per second, as a camera clip run.py reads."""
    import cv2
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def snapshot(folder) -> dict:
    """{relative path: md5} of every file below folder."""
    import hashlib
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_bad_input(argv, folder, fragments, env=None):
    """Run the CLI `argv` (in `env`, default ours): exit 2, exactly one `error:` line holding every fragment, no
    traceback, every file that was below `folder` unchanged and no new one."""
    before = snapshot(folder)
    r = cli(*argv, timeout=600, env=env)
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for f in fragments:
        assert f in errors[0], errors[0]
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in before} == before, "a pre-existing file changed"
    assert not [k for k in after if k not in before], f"stray files: {[k for k in after if k not in before]}"


def random_checkpoint(config, path):
    """`config`'s model with MindSpore's initial weights but for the class conv: weight ~ N(0, 0.03), bias ~
    N(-4, 1) (seeded). The initial ones (normal 0.01, prior bias: every cell 0.01) make the class logits nearly
    constant over the grid, so neighbouring cells tie to float32 noise and points-NMS keeps one or the other at
    random; these give logits that vary from cell to cell (std ~ 1.4), about 10 % of the (cell, class) pairs
    above score_thr 0.1 (logit -2.2) and ~3 % after points-NMS: thousands of candidates, as an undertrained model
    gives. A mean of -1 gave ~75,000 per image (80 classes), whose masks took 9 s of NumPy per image and most of
    these tests' time. Deformable offset convs (initialised to 0: a regular convolution) get weights ~ N(0, 0.05),
    offsets of a fraction of a pixel to a few (measured on a val image: mean 0.15-0.2 px in the backbone, ~1.3 in
    the head), so that an exported model's offset layout or sampling is checked. Seeded (ms.set_seed, which seeds
    the initializers too): the same model in every session."""
    from solov2.config import load_config
    from solov2.models.solov2 import build_model
    ms.set_seed(0)
    net = build_model(load_config(config))
    rng = np.random.default_rng(0)
    for p, mean, std in ((net.bbox_head.solo_cate.weight, 0.0, 0.03), (net.bbox_head.solo_cate.bias, -4.0, 1.0)):
        p.set_data(ms.Tensor(rng.normal(mean, std, p.shape).astype(np.float32)))
    for p in net.get_parameters():
        if p.name.endswith("conv_offset.weight"):
            p.set_data(ms.Tensor(rng.normal(0.0, 0.05, p.shape).astype(np.float32)))
    ms.save_checkpoint(net, str(path))
    return path


@pytest.fixture(scope="session")
def dcn_ckpt(tmp_path_factory):
    """light-512-DCN-R50 (DCNv1 in res3-res5 and the last head conv), random weights."""
    return random_checkpoint(DCN_CFG, tmp_path_factory.mktemp("dcn") / "light512_dcn_r50.ckpt")


@pytest.fixture(scope="session")
def r50_ckpt(tmp_path_factory):
    """SOLOv2 R50 (the full SOLOv2Head), random weights, as a user gets it: an official mmcv .pth (official keys)
    converted by weight_convert.py."""
    import torch
    d = tmp_path_factory.mktemp("r50")
    weights = ms.load_checkpoint(str(random_checkpoint(R50_CFG, d / "random.ckpt")))
    sd = collections.OrderedDict((official_name_of(k), torch.from_numpy(v.asnumpy())) for k, v in weights.items())
    torch.save({"meta": {"mmdet_version": "1.0.0"}, "state_dict": sd}, d / "r50_official.pth")
    r = cli("weight_convert.py", d / "r50_official.pth", d / "r50.ckpt", "--config", R50_CFG)
    assert r.returncode == 0, r.stderr
    return d / "r50.ckpt"


@pytest.fixture(scope="session")
def native_predictor():
    """A function (config path, checkpoint, overrides=()) -> the native Predictor of that model, built once per
    session: the MindIR and ONNX tests compare several exported models with the same native networks, whose GRAPH
    compile (one for every image size, kept by the Predictor's cell) then happens once. A Predictor runs in the mode
    set when it is called, so one serves both modes."""
    from solov2.config import load_config
    from solov2.inference import Predictor
    made = {}

    def get(config, weights, overrides=()):
        key = (str(config), str(weights), tuple(overrides))
        if key not in made:
            made[key] = Predictor(load_config(config, list(overrides)), str(weights))
        return made[key]
    return get


@pytest.fixture(scope="session")
def native_val_results(ckpt, tmp_path_factory):
    """valuation.py CONFIG CHECKPOINT (light-R18 TrashCan, reference weights) on the first 12 val images: the native
    results both exported formats are scored against (computed once)."""
    out = tmp_path_factory.mktemp("native_val") / "native.json"
    r = cli("valuation.py", TRASHCAN_CFG, ckpt, "--ann", VAL_ANN, "--img-prefix", MINI / "val", "--max-images", "12",
            "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def decode_rle(seg) -> np.ndarray:
    from pycocotools import mask as mask_util
    return mask_util.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


# The near-threshold rule of every comparison with the official code (see tests/models/test_parity_torch.py for the
# derivation): float32 noise may binarise a 1/4-resolution mask pixel the other way only where the reference
# probability is within NEAR of mask_thr, and such a pixel moves the maskness and the Matrix NMS IoUs, hence the
# final score, by a computable amount. The reference is therefore re-run with those pixels decided as ours decides
# them (`official_near_decided`), and scores are compared with it at 1e-4.
NEAR = 1e-4


def near_decided(outputs, other, meta, test_cfg, grids=(40, 36, 24, 16, 12), strides=(8, 8, 16, 32, 32)) -> list:
    """Results.json-like records (label, score, segmentation) of the torch post-processing
    (tests/models/torch_solov2.py) of one network's outputs (cate_scores (cells, C), kernels (cells, E), mask_feat
    (E, h, w) NumPy arrays) with its near-threshold 1/4-resolution mask pixels binarised by `other` network's
    (kernels, mask_feat). meta: img_shape, ori_shape; test_cfg: any object with the test_cfg attributes. Each
    record also holds `clear`, bool (H0, W0): the full-resolution pixels whose probability is not within NEAR of
    mask_thr (`match_instances` compares masks there)."""
    import torch
    from solov2.evaluation.results import mask_to_rle
    sys.path.insert(0, str(REPO / "tests" / "models"))
    import torch_solov2 as ts
    cate, kern, mask_feat = (torch.from_numpy(np.ascontiguousarray(a)) for a in outputs)
    r = ts.get_seg_single(cate, kern, mask_feat, meta["img_shape"], meta["ori_shape"], test_cfg, grids, strides,
                          near_decided_by=(*(torch.from_numpy(np.ascontiguousarray(a)) for a in other), NEAR))
    clear = (r["soft"] - test_cfg.mask_thr).abs() > NEAR
    return [dict(label=int(label), score=float(score), segmentation=mask_to_rle(mask.numpy()), clear=c.numpy())
            for label, score, mask, c in zip(r["labels"], r["scores"], r["masks"], clear)]


def official_near_decided(ours_kernels, ours_mask_feat) -> list:
    """The official instances of fixtures/reference/inference_trashcan_val re-derived from the official head outputs
    by `near_decided` (equal to the official final scores within 1.2e-7) with the official near-threshold pixels
    binarised by our kernels (cells, E) and mask features (E, h, w)."""
    z = np.load(REF / "inference_trashcan_val.npz")
    test_cfg = json.loads((REF / "inference_trashcan_val.json").read_text())["test_cfg"]
    num_classes, e = z["cate_pred_l0"].shape[-1], len(z["mask_feat"][0])
    cate = np.concatenate([z[f"cate_pred_l{i}"][0].reshape(-1, num_classes) for i in range(5)])
    kern = np.concatenate([z[f"kernel_pred_l{i}"][0].reshape(e, -1).T for i in range(5)])
    return near_decided((cate, kern, z["mask_feat"][0]), (ours_kernels, ours_mask_feat),
                        dict(img_shape=z["img_shape"], ori_shape=z["ori_shape"]),
                        collections.namedtuple("TestCfg", test_cfg)(**test_cfg))


def match_instances(expected, got, iou_min=0.999, score_tol=1e-4):
    """Pair every expected instance (results.json records) with an unused one of the same label in `got`.

    Asserts the same count, mask IoU >= iou_min and |score difference| <= score_tol; returns the pairs. Against
    another network, `expected` comes from `near_decided` (the near-threshold rule above): its scores are re-derived
    and its masks are compared over the `clear` pixels only (float32 noise decides the others; raw IoU >= 0.99).
    """
    assert len(got) == len(expected), (len(got), len(expected))
    masks = [decode_rle(o["segmentation"]) for o in got]
    used, pairs = set(), []
    for k, inst in enumerate(expected):
        m = decode_rle(inst["segmentation"])
        clear = inst.get("clear", True)
        best, best_iou, best_raw = None, -1.0, -1.0
        for j, o in enumerate(got):
            if j in used or o["label"] != inst["label"]:
                continue
            union = ((m | masks[j]) & clear).sum()
            iou = ((m & masks[j]) & clear).sum() / union if union else 1.0  # two empty masks (tiny images) agree
            if iou > best_iou:
                raw_union = (m | masks[j]).sum()
                best, best_iou, best_raw = j, iou, (m & masks[j]).sum() / raw_union if raw_union else 1.0
        assert best is not None and best_iou >= iou_min and best_raw >= min(iou_min, 0.99), \
            (k, inst.get("file_name"), best_iou, best_raw)
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
