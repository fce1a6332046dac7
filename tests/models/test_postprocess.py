"""get_seg_single against the official post-processing intermediates and results
(fixtures/reference/inference_trashcan_val.{npz,json}, README sections 4, 8 and 9)."""
import dataclasses
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from solov2 import config as solo_config   # not `TestConfig` by name: pytest would try to collect it
import solov2.models.postprocess as postprocess
from solov2.models.postprocess import (dynamic_masks, get_seg_single, masks_to_original, matrix_nms,
                                       resize_bilinear)
from conftest import NEAR, SHARED

REF = SHARED / "fixtures" / "reference"

NUM_GRIDS = (40, 36, 24, 16, 12)
STRIDES = (8, 8, 16, 32, 32)
NUM_CLASSES = 22


# Our NumPy mask computation against torch's (the fixtures'): a mask pixel may fall on the other side of mask_thr
# only where its probability is within NEAR of it (the near-threshold rule of tests/conftest.py). Scores without
# such a flip differ by float32 rounding only: a few ulps of a product and a mean of values <= 1 (1e-6).
SCORE_ROUNDING = 1e-6


def near_pixels(ref, cells) -> np.ndarray:
    """bool (n, h, w): the 1/4-resolution pixels of the given cells' soft masks within NEAR of mask_thr."""
    soft = dynamic_masks(ref["inputs"]["kernels"][cells], ref["inputs"]["mask_feat"])
    return np.abs(soft - ref["cfg"].mask_thr) <= NEAR


def _ref_file(name):
    path = REF / name
    if not path.is_file():
        pytest.fail(f"reference fixture missing: {path} (set SOLOV2_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="module")
def ref():
    z = np.load(_ref_file("inference_trashcan_val.npz"))
    meta = json.loads(_ref_file("inference_trashcan_val.json").read_text())
    cate = np.concatenate([z[f"cate_pred_l{i}"][0].reshape(-1, NUM_CLASSES) for i in range(5)])
    kernels = np.concatenate([z[f"kernel_pred_l{i}"][0].reshape(z[f"kernel_pred_l{i}"].shape[1], -1).T
                              for i in range(5)])
    inputs = dict(cate_scores=cate, kernels=kernels, mask_feat=z["mask_feat"][0],
                  img_shape=tuple(meta["img_meta"]["img_shape"]), ori_shape=tuple(meta["img_meta"]["ori_shape"]),
                  num_grids=NUM_GRIDS, strides=STRIDES)
    return dict(z=z, meta=meta, inputs=inputs, cfg=solo_config.TestConfig(**meta["test_cfg"]))


@pytest.fixture(scope="module")
def run(ref):
    debug = {}
    out = get_seg_single(test_cfg=ref["cfg"], debug=debug, **ref["inputs"])
    return out, debug


def test_inputs_are_the_documented_ones(ref):
    assert ref["inputs"]["cate_scores"].shape == (3872, 22)
    assert ref["inputs"]["kernels"].shape == (3872, 128)
    assert ref["inputs"]["img_shape"][:2] == (432, 768) and ref["inputs"]["ori_shape"][:2] == (270, 480)


def test_candidates_after_score_thr(ref, run):
    _, dbg = run
    z = ref["z"]
    assert len(dbg["cand_cell"]) == 118
    np.testing.assert_array_equal(dbg["cand_cell"], z["pp_cand_cell"])      # same (cell, label) order
    np.testing.assert_array_equal(dbg["cand_label"], z["pp_cand_label"])
    np.testing.assert_array_equal(dbg["cand_score"], z["pp_cand_score"])


def test_stride_filter(ref, run):
    _, dbg = run
    z = ref["z"]
    np.testing.assert_array_equal(dbg["cand_keep_stride"], z["pp_cand_keep_stride"])
    assert dbg["cand_keep_stride"].sum() == 108
    # a count may move only by its mask's pixels within NEAR of mask_thr; the strict `>` case (sum == stride) must
    # be dropped
    near = near_pixels(ref, dbg["cand_cell"]).sum(axis=(1, 2))
    assert (np.abs(dbg["cand_sum_mask"] - z["pp_cand_sum_mask"]) <= near).all()
    assert ((z["pp_cand_sum_mask"] == z["pp_cand_stride"]) & ~dbg["cand_keep_stride"]).any()


def test_sorted_list_before_nms(ref, run):
    _, dbg = run
    z = ref["z"]
    np.testing.assert_array_equal(dbg["sorted_cell"], z["pp_sorted_cell"])
    np.testing.assert_array_equal(dbg["sorted_label"], z["pp_sorted_label"])
    near = near_pixels(ref, dbg["sorted_cell"])
    flips = dbg["sorted_masks"] != z["pp_sorted_masks"]
    assert not (flips & ~near).any()                                    # only near-threshold pixels may flip
    flipped = flips.sum(axis=(1, 2))
    assert (np.abs(dbg["sorted_sum_mask"] - z["pp_sorted_sum_mask"]) <= flipped).all()
    # a flipped pixel (probability ~mask_thr) moves the maskness, a mean over sum_mask pixels, by < 1 / sum_mask
    bound = SCORE_ROUNDING + flipped / z["pp_sorted_sum_mask"]
    assert (np.abs(dbg["sorted_score_before_nms"] - z["pp_sorted_score_before_nms"]) <= bound).all()


def test_scores_after_nms(ref, run):
    _, dbg = run
    z = ref["z"]
    assert dbg["sorted_score_after_nms"].dtype == np.float32
    # rows that no flipped mask reaches (its own, or a higher-scored one of its label, whose IoU decays it) are equal
    # to float32 rounding; the others to the final criterion of the parity tests (1e-4, after the near rule)
    flipped = (dbg["sorted_masks"] != z["pp_sorted_masks"]).any(axis=(1, 2))
    labels = dbg["sorted_label"]
    reached = np.array([flipped[:j + 1][labels[:j + 1] == labels[j]].any() for j in range(len(labels))])
    d = np.abs(dbg["sorted_score_after_nms"] - z["pp_sorted_score_after_nms"])
    assert (d[~reached] <= SCORE_ROUNDING).all() and (d[reached] <= 1e-4).all()


def test_final_instances(ref, run):
    out, _ = run
    z, meta = ref["z"], ref["meta"]
    n = 100
    assert out["masks"].shape == (n, 270, 480) and out["masks"].dtype == bool
    assert out["labels"].dtype == np.int64 and out["cells"].dtype == np.int64
    assert out["scores"].dtype == np.float32
    assert np.all(np.diff(out["scores"]) <= 0)
    assert set(zip(out["cells"].tolist(), out["labels"].tolist())) == \
        set(zip(z["pp_final_cell"].tolist(), z["final_labels"].tolist()))
    by_key = {(r["cell"], r["label"]): r for r in meta["results"]}
    score_diffs, ious = [], []
    for mask, cell, label, score in zip(out["masks"], out["cells"], out["labels"], out["scores"]):
        r = by_key[(int(cell), int(label))]
        ref_mask = mask_util.decode(r["segmentation"]).astype(bool)
        score_diffs.append(abs(float(score) - r["score"]))
        ious.append((mask & ref_mask).sum() / max((mask | ref_mask).sum(), 1))
    assert max(score_diffs) <= 1e-4, max(score_diffs)
    assert min(ious) >= 0.999, min(ious)


def _cfg(ref, **changes):
    return dataclasses.replace(ref["cfg"], **changes)


def _assert_empty(out):
    assert out["masks"].shape == (0, 270, 480) and out["masks"].dtype == bool
    assert out["labels"].shape == (0,) and out["labels"].dtype == np.int64
    assert out["scores"].shape == (0,) and out["scores"].dtype == np.float32
    assert out["cells"].shape == (0,) and out["cells"].dtype == np.int64


def test_no_candidate_above_score_thr(ref):
    debug = {}
    out = get_seg_single(test_cfg=_cfg(ref, score_thr=1.0), debug=debug, **ref["inputs"])
    _assert_empty(out)
    assert len(debug["cand_cell"]) == 0


def test_all_removed_by_stride_filter(ref):
    inputs = dict(ref["inputs"], strides=(10 ** 6,) * 5)
    debug = {}
    out = get_seg_single(test_cfg=ref["cfg"], debug=debug, **inputs)
    _assert_empty(out)
    assert len(debug["cand_cell"]) == 118 and not debug["cand_keep_stride"].any()


def test_none_above_update_thr(ref):
    _assert_empty(get_seg_single(test_cfg=_cfg(ref, update_thr=0.99), **ref["inputs"]))


def test_linear_kernel(ref, run):
    z = ref["z"]
    debug = {}
    out = get_seg_single(test_cfg=_cfg(ref, kernel="linear"), debug=debug, **ref["inputs"])
    # the NMS stage must equal the (officially verified) standalone linear matrix_nms on the official inputs
    expected = matrix_nms(z["pp_sorted_masks"], z["pp_sorted_label"], z["pp_sorted_score_before_nms"],
                          kernel="linear", sum_masks=z["pp_sorted_sum_mask"])
    np.testing.assert_allclose(debug["sorted_score_after_nms"], expected, rtol=0, atol=1e-5)
    keep = expected >= ref["cfg"].update_thr
    assert len(out["scores"]) == min(keep.sum(), ref["cfg"].max_per_img)
    np.testing.assert_allclose(out["scores"], np.sort(expected[keep])[::-1][:len(out["scores"])], atol=1e-5)
    gaussian_scores = run[1]["sorted_score_after_nms"]
    assert np.abs(debug["sorted_score_after_nms"] - gaussian_scores).max() > 1e-2   # the kernel is used


def test_nms_pre_and_max_per_img(ref, run):
    full, full_dbg = run
    debug = {}
    out = get_seg_single(test_cfg=_cfg(ref, nms_pre=50, max_per_img=10), debug=debug, **ref["inputs"])
    # nms_pre cuts the maskness-rescored sorted list (before NMS)
    np.testing.assert_array_equal(debug["sorted_cell"], full_dbg["sorted_cell"][:50])
    assert len(out["scores"]) == 10
    assert np.all(np.diff(out["scores"]) <= 0)
    # NMS on a prefix: the first 50 decayed scores only depend on higher-scored masks, so they are unchanged
    np.testing.assert_array_equal(debug["sorted_score_after_nms"], full_dbg["sorted_score_after_nms"][:50])
    np.testing.assert_array_equal(out["cells"], full["cells"][:10])
    np.testing.assert_array_equal(out["masks"], full["masks"][:10])


def test_chunked_scoring_is_consistent(ref, run, monkeypatch):
    full, full_dbg = run
    # the masks recomputed for the survivors agree with the per-candidate statistics of the first pass
    np.testing.assert_array_equal(full_dbg["sorted_masks"].reshape(108, -1).sum(axis=1), full_dbg["sorted_sum_mask"])
    monkeypatch.setattr(postprocess, "_CANDIDATE_CHUNK", 7)         # 118 candidates -> 17 chunks
    debug = {}
    out = get_seg_single(test_cfg=ref["cfg"], debug=debug, **ref["inputs"])
    np.testing.assert_array_equal(debug["cand_sum_mask"], full_dbg["cand_sum_mask"])
    np.testing.assert_allclose(debug["sorted_score_before_nms"], full_dbg["sorted_score_before_nms"], rtol=1e-6)
    np.testing.assert_array_equal(out["cells"], full["cells"])
    np.testing.assert_array_equal(out["masks"], full["masks"])


def test_wrong_number_of_cells_rejected(ref):
    inputs = dict(ref["inputs"], num_grids=(40, 36, 24, 16))
    with pytest.raises(ValueError, match="cells"):
        get_seg_single(test_cfg=ref["cfg"], **inputs)


@pytest.mark.parametrize("in_hw, out_hw, crop_hw", [
    ((112, 192), (448, 768), (432, 768)),   # the x4 upsampling + crop of the fixture
    ((432, 768), (270, 480), None),          # ratio 1.6: float32 source coordinates matter here
    ((50, 76), (36, 36), None),
    ((37, 51), (100, 7), (90, 5)),
    ((1, 5), (3, 9), None),
])
def test_resize_bilinear_matches_torch(in_hw, out_hw, crop_hw):
    import torch  # in .[dev]: a broken install must fail, not skip
    x = np.random.default_rng(0).random((3,) + in_hw, dtype=np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=out_hw, mode="bilinear",
                                               align_corners=False)[0].numpy()
    if crop_hw is not None:
        expected = expected[:, :crop_hw[0], :crop_hw[1]]
    got = resize_bilinear(x, out_hw, crop_hw)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-6


def test_masks_to_original_matches_torch():
    import torch  # in .[dev]: a broken install must fail, not skip
    F = torch.nn.functional
    # smooth soft masks (few values near the threshold) at 1/4 of a 160x224 padded input
    yy, xx = np.mgrid[0:40, 0:56].astype(np.float32)
    soft = np.stack([1 / (1 + np.exp(-(9 - np.hypot(yy - cy, xx - cx)))) for cy, cx in [(10, 12), (30, 40)]])
    soft = soft.astype(np.float32)
    img_shape, ori_shape = (150, 211), (97, 137)
    t = F.interpolate(torch.from_numpy(soft)[None], size=(160, 224), mode="bilinear")[:, :, :150, :211]
    expected = (F.interpolate(t, size=ori_shape, mode="bilinear")[0] > 0.5).numpy()
    got = masks_to_original(soft, img_shape, ori_shape, 0.5)
    assert got.dtype == bool and got.shape == (2,) + ori_shape
    assert expected.sum() > 500
    assert (got != expected).sum() <= 2


def test_threshold_strictness_synthetic():
    """score_thr is strict (>), update_thr is not (>=), as in the official code.

    One level with a 2x2 grid, 2 classes, E = 1: every kernel selects the same 4x4 block of an 8x8 mask
    feature map with probabilities of exactly 1 (maskness 1), and the candidates have different classes,
    so the final scores equal the category scores bit for bit.
    """
    cfg = solo_config.TestConfig(score_thr=0.1, update_thr=0.3)
    cate = np.zeros((4, 2), np.float32)
    cate[0, 0] = np.float32(0.1)                                   # == score_thr: not a candidate
    cate[1, 1] = np.nextafter(np.float32(0.1), np.float32(1))      # just above: candidate, below update_thr
    cate[2, 0] = np.float32(0.3)                                   # == update_thr: kept
    kernels = np.ones((4, 1), np.float32)
    mask_feat = np.full((1, 8, 8), -200, np.float32)
    mask_feat[0, 2:6, 2:6] = 200                                   # 16 pixels > stride 8
    debug = {}
    out = get_seg_single(cate, kernels, mask_feat, (32, 32, 3), (32, 32, 3), cfg, num_grids=(2,), strides=(8,),
                         debug=debug)
    assert debug["cand_cell"].tolist() == [1, 2] and debug["cand_label"].tolist() == [1, 0]
    assert out["cells"].tolist() == [2] and out["labels"].tolist() == [0]
    assert out["scores"].tolist() == [np.float32(0.3)]
    # x4 bilinear (half-pixel) of a 0/1 block at rows/cols 2..5: per axis the ramp is
    # .125 .375 | .625 .875 1 ... 1 .875 .625 | .375 .125 at 6, 7 | 8, 9 ... 22, 23 | 24, 25; 2-D = product
    ramp = np.zeros(32, np.float32)
    ramp[6:26] = [.125, .375, .625, .875] + [1] * 12 + [.875, .625, .375, .125]
    np.testing.assert_array_equal(out["masks"][0], np.outer(ramp, ramp) > 0.5)   # corners: .625^2 < .5
