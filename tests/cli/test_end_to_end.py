"""The user's path, through the real command-line tools: official .pth -> weight_convert.py -> run.py / test.py,
compared with the instances the official PyTorch code found on the same photo (fixtures/reference)."""
import json
import shutil

import cv2
import numpy as np
import pytest
import mindspore as ms
from conftest import REF, REPO, SHARED, TRASHCAN_CFG, cli, match_instances, official_near_decided, write_video

from solov2.data.transforms import preprocess_test

CFG = TRASHCAN_CFG
COCO_CFG = REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x.py"
VAL_IMG = SHARED / "datasets" / "trashcan_mini" / "val" / "vid_000102_frame0000035.jpg"


def test_preprocessing_is_bitwise_official():
    ref = np.load(REF / "inference_trashcan_val.npz")
    x, meta = preprocess_test(ref["ori_img_bgr"], (768, 448), (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    np.testing.assert_array_equal(x, ref["input"])
    assert meta["img_shape"] == (432, 768, 3) and meta["pad_shape"] == (448, 768, 3)
    assert meta["scale_factor"] == pytest.approx(1.6)


@pytest.fixture(scope="module")
def official_instances(reference_net):
    """The official instances with the official near-threshold mask pixels decided by our network (conftest.NEAR)."""
    from solov2.models.solov2 import SOLOv2Eval
    _, kernels, mask_feat = (t.asnumpy()[0] for t in SOLOv2Eval(reference_net)(
        ms.Tensor(np.load(REF / "inference_trashcan_val.npz")["input"])))
    return official_near_decided(kernels, mask_feat)


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_run_py_reproduces_official_instances(ckpt, official_instances, tmp_path, mode):
    """Final instances equal the official ones: same labels, scores within 1e-4 (near-threshold rule), mask IoU
    >= 0.999."""
    if not np.array_equal(cv2.imread(str(VAL_IMG)), np.load(REF / "inference_trashcan_val.npz")["ori_img_bgr"]):
        pytest.fail("this cv2 decodes the JPEG differently from the fixture's cv2; compare from ori_img_bgr")
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(VAL_IMG, inp)
    r = cli("run.py", CFG, ckpt, inp, "--out", tmp_path / "out", "--mode", mode)
    assert r.returncode == 0, r.stderr[-3000:]
    ours = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (tmp_path / "out" / VAL_IMG.name).is_file()
    official = json.loads((REF / "inference_trashcan_val.json").read_text())["results"]
    assert len(ours) == len(official) == 100
    names = json.loads((REF / "meta.json").read_text())["checkpoint_meta_suggestion"]["CLASSES"]
    pairs = match_instances(official_instances, ours)
    for inst, o in pairs:
        assert o["category_name"] == names[inst["label"]]
        assert o["file_name"] == VAL_IMG.name and len(o["bbox"]) == 4


def test_test_py_writes_a_picture_and_never_overwrites(ckpt, tmp_path):
    out = tmp_path / "pic.jpg"
    # the official form (CONFIG CHECKPOINT positionally); the flag form below
    r = cli("test.py", CFG, ckpt, "--dataroot", VAL_IMG, "--out", out, "--mode", "pynative")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "100 instances" in r.stdout
    pic = cv2.imread(str(out))
    assert pic.shape == (270, 480, 3) and not np.array_equal(pic, cv2.imread(str(VAL_IMG)))
    before = out.read_bytes()
    r = cli("test.py", "--config", CFG, "--checkpoint", ckpt, "--dataroot", VAL_IMG, "--out", out)
    assert r.returncode == 2 and "already exists" in r.stderr and out.read_bytes() == before


@pytest.mark.parametrize("script", ["test.py", "run.py", "valuation.py"])
def test_config_flag_wins_over_the_positional_config(script, tmp_path):
    """Both forms given: --config / --checkpoint win (the error names the flag's config, read before any model)."""
    extra = {"test.py": ["--dataroot", VAL_IMG, "--out", tmp_path / "o.jpg"], "valuation.py": [],
             "run.py": [VAL_IMG, "--out", tmp_path / "o"]}[script]
    r = cli(script, tmp_path / "not_this.py", tmp_path / "not_this.ckpt", *extra, "--config", CFG, "--checkpoint",
            tmp_path / "x.ckpt", "--cfg-options", "test_cfg.score_thr=7")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {CFG}: test_cfg.score_thr: must be"), r.stderr
    assert "not_this" not in r.stderr


@pytest.mark.parametrize("script, args", [
    ("run.py", ["--out", "o", VAL_IMG]),                                       # positionals after a flag
    ("run.py", ["--mode", "pynative", VAL_IMG, "--out", "o"]),
    ("test.py", ["--dataroot", VAL_IMG, "--out", "o.jpg"]),
    ("valuation.py", ["--eval", "segm"]),
])
def test_positional_forms_between_flags(script, args, tmp_path):
    """CONFIG CHECKPOINT first, the rest in any order: parsing succeeds (the run stops at the bad override)."""
    args = [tmp_path / a if a in ("o", "o.jpg") else a for a in args]
    r = cli(script, CFG, tmp_path / "x.ckpt", *args, "--cfg-options", "test_cfg.score_thr=7")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {CFG}: test_cfg.score_thr: must be"), r.stderr


def test_positional_config_needs_a_checkpoint(tmp_path):
    r = cli("test.py", CFG, "--dataroot", VAL_IMG, "--out", tmp_path / "o.jpg")
    assert r.returncode == 2 and "the checkpoint is required: CHECKPOINT or --checkpoint" in r.stderr


def test_run_py_on_a_video(ckpt, tmp_path):
    frame = cv2.imread(str(VAL_IMG))
    video = write_video(tmp_path / "clip.avi", [np.roll(frame, 8 * k, axis=1) for k in range(3)])
    r = cli("run.py", CFG, ckpt, video, "--out", tmp_path / "out", "--mode", "pynative")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == [f"clip_{k:06d}.jpg" for k in range(3)]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {o["file_name"] for o in res} == {f"clip_{k:06d}.jpg" for k in range(3)}


def assert_clean_failure(r, *fragments):
    """Exit code 2, a single `error:` line naming the problem, no traceback."""
    lines = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for f in fragments:
        assert str(f) in lines[0], lines[0]


def test_bad_inputs_give_one_line_errors(ckpt, tmp_path):
    out = tmp_path / "out.jpg"
    r = cli("test.py", "--config", CFG, "--checkpoint", ckpt, "--dataroot", tmp_path / "missing.jpg", "--out", out)
    assert_clean_failure(r, "missing.jpg", "no such image")
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    r = cli("test.py", "--config", CFG, "--checkpoint", ckpt, "--dataroot", bad, "--out", out)
    assert_clean_failure(r, "bad.jpg", "cannot decode")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("run.py", CFG, ckpt, empty, "--out", tmp_path / "o")
    assert_clean_failure(r, "empty", "no images")
    not_ckpt = tmp_path / "x.ckpt"
    not_ckpt.write_text("hello")
    r = cli("test.py", "--config", CFG, "--checkpoint", not_ckpt, "--dataroot", VAL_IMG, "--out", out)
    assert_clean_failure(r, "x.ckpt", "not a readable MindSpore checkpoint")
    # 80-class COCO config with the 22-class checkpoint: another class count
    r = cli("test.py", "--config", COCO_CFG, "--checkpoint", ckpt, "--dataroot", VAL_IMG, "--out", out)
    assert_clean_failure(r, ckpt.name, "bbox_head.solo_cate", "(22, 256, 3, 3)", "(80, 256, 3, 3)")
    r = cli("run.py", CFG, ckpt, tmp_path / "nothing_here", "--out", tmp_path / "o")
    assert_clean_failure(r, "nothing_here", "no such file or folder")
    assert not out.exists() and not (tmp_path / "o" / "results.json").exists()
