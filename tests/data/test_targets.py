"""Train pipeline, target assignment and packing vs the official fixture and a torch transcription."""

import cv2
import numpy as np
import pytest
import torch

from solov2.data.coco import CocoDataset
from solov2.data.train_transforms import (collate, flip_sample, resize_sample, select_scale, train_transform)
from solov2.data.targets import center_of_mass, downscale_mask, pack_targets, solov2_target_single
from conftest import NORM, SHARED

FIX = SHARED / "fixtures" / "reference" / "train_trashcan_batch2.npz"
DATA = SHARED / "datasets" / "trashcan_mini"
LIGHT_RANGES = ((1, 56), (28, 112), (56, 224), (112, 448), (224, 896))
GRIDS = (40, 36, 24, 16, 12)
NAMES = ("vid_000054_frame0000035.jpg", "vid_000434_frame0000024.jpg")


@pytest.fixture(scope="module")
def fix():
    assert FIX.is_file(), f"missing fixture {FIX} (set SOLOV2_SHARED)"
    return dict(np.load(FIX))


@pytest.fixture(scope="module")
def fixture_batch():
    ds = CocoDataset(DATA / "annotations" / "instances_train_trashcan.json", DATA / "train")
    idx = [next(i for i, r in enumerate(ds.records) if r["filename"].endswith(n)) for n in NAMES]
    rng = np.random.RandomState(0)
    samples = [train_transform(ds[i], rng, scales=[(768, 448)], flip_ratio=0.0, **NORM) for i in idx]
    return samples, collate(samples, scale_ranges=LIGHT_RANGES, num_grids=GRIDS, sigma=0.2, max_pos=128)


def test_pipeline_reproduces_fixture(fix, fixture_batch):
    samples, batch = fixture_batch
    assert batch["img"].shape == fix["img"].shape
    assert np.abs(batch["img"] - fix["img"]).max() <= 1e-6
    for i, s in enumerate(samples):
        assert np.abs(s["gt_bboxes"] - fix[f"gt_bboxes_{i}"]).max() <= 1e-4
        np.testing.assert_array_equal(s["gt_labels"], fix[f"gt_labels_{i}"])
        assert s["gt_masks"].dtype == np.uint8
        np.testing.assert_array_equal(s["gt_masks"].astype(bool), fix[f"gt_masks_{i}"])
    assert samples[1]["pad_shape"] == (448, 608, 3) and samples[1]["img_shape"] == (448, 597, 3)


def test_targets_match_fixture_exactly(fix):
    for i in range(2):
        cate, ind, order, ins = solov2_target_single(fix[f"gt_bboxes_{i}"], fix[f"gt_labels_{i}"],
                                                     fix[f"gt_masks_{i}"].astype(np.uint8), (112, 192),
                                                     scale_ranges=LIGHT_RANGES, num_grids=GRIDS, sigma=0.2)
        for l in range(5):
            np.testing.assert_array_equal(cate[l], fix[f"cate_label_{i}_l{l}"])
            assert cate[l].dtype == np.int64
            np.testing.assert_array_equal(ind[l], fix[f"ins_ind_label_{i}_l{l}"])
            np.testing.assert_array_equal(order[l], fix[f"grid_order_{i}_l{l}"])
            assert ins[l].dtype == np.uint8 and ins[l].shape == fix[f"ins_label_{i}_l{l}"].shape
            np.testing.assert_array_equal(ins[l].astype(bool), fix[f"ins_label_{i}_l{l}"])


def test_collate_packs_fixture_targets(fix, fixture_batch):
    _, b = fixture_batch
    assert float(b["num_ins"]) == 117.0
    offsets = np.cumsum([0] + [s * s for s in GRIDS])
    for i in range(2):
        cate = np.concatenate([fix[f"cate_label_{i}_l{l}"].reshape(-1) for l in range(5)])
        np.testing.assert_array_equal(b["cate_target"][i], cate)
        cells = np.concatenate([offsets[l] + fix[f"grid_order_{i}_l{l}"] for l in range(5)])
        masks = np.concatenate([fix[f"ins_label_{i}_l{l}"] for l in range(5)])
        k = len(cells)
        np.testing.assert_array_equal(b["pos_cell"][i, :k], cells)
        np.testing.assert_array_equal(b["pos_mask"][i, :k].astype(bool), masks)
        assert b["pos_valid"][i].sum() == k and (b["pos_valid"][i, :k] == 1).all()
        assert not b["pos_mask"][i, k:].any() and not b["pos_cell"][i, k:].any()
    assert b["cate_target"].dtype == np.int32 and b["pos_cell"].dtype == np.int32
    assert b["pos_mask"].shape == (2, 128, 112, 192)


def test_collate_fixed_canvas(fixture_batch):
    samples, _ = fixture_batch
    b = collate(samples, canvas=(512, 800), scale_ranges=LIGHT_RANGES, num_grids=GRIDS, sigma=0.2, max_pos=128)
    assert b["img"].shape == (2, 3, 512, 800) and b["pos_mask"].shape == (2, 128, 128, 200)
    assert not b["img"][1, :, :, 608:].any() and not b["img"][:, :, 448:].any()
    np.testing.assert_array_equal(b["img"][1, :, :448, :608], samples[1]["img"].transpose(2, 0, 1))
    with pytest.raises(ValueError, match="smaller"):
        collate(samples, canvas=(448, 704), scale_ranges=LIGHT_RANGES, num_grids=GRIDS, sigma=0.2, max_pos=128)


def _official_target_torch(bboxes, labels, masks, mask_feat_size, scale_ranges, num_grids, sigma):
    """Transcription of the official torch solov2_target_single (mmcv.imrescale -> cv2 INTER_LINEAR)."""
    bboxes, labels = torch.from_numpy(bboxes), torch.from_numpy(labels)
    areas = torch.sqrt((bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1]))
    out = ([], [], [], [])
    for (lo, hi), S in zip(scale_ranges, num_grids):
        hit = ((areas >= lo) & (areas <= hi)).nonzero().flatten()
        cate = torch.zeros([S, S], dtype=torch.int64)
        ind = torch.zeros([S ** 2], dtype=torch.bool)
        ins, order = [], []
        b, lab, m = bboxes[hit], labels[hit], masks[hit.numpy()]
        hws, hhs = 0.5 * (b[:, 2] - b[:, 0]) * sigma, 0.5 * (b[:, 3] - b[:, 1]) * sigma
        mt = torch.from_numpy(m)
        ys, xs = torch.arange(0, m.shape[1], dtype=torch.float32), torch.arange(0, m.shape[2], dtype=torch.float32)
        m00 = mt.sum(dim=-1).sum(dim=-1).clamp(min=1e-6)
        cws = (mt * xs).sum(dim=-1).sum(dim=-1) / m00
        chs = (mt * ys[:, None]).sum(dim=-1).sum(dim=-1) / m00
        for seg, g, hh, hw, ch, cw, ok in zip(m, lab, hhs, hws, chs, cws, mt.sum(dim=-1).sum(dim=-1) > 0):
            if not ok:
                continue
            up = (mask_feat_size[0] * 4, mask_feat_size[1] * 4)
            cx, cy = int((cw / up[1]) // (1. / S)), int((ch / up[0]) // (1. / S))
            top = max(max(0, int(((ch - hh) / up[0]) // (1. / S))), cy - 1)
            down = min(min(S - 1, int(((ch + hh) / up[0]) // (1. / S))), cy + 1)
            left = max(cx - 1, max(0, int(((cw - hw) / up[1]) // (1. / S))))
            right = min(min(S - 1, int(((cw + hw) / up[1]) // (1. / S))), cx + 1)
            cate[top:down + 1, left:right + 1] = g
            h, w = seg.shape
            small = torch.from_numpy(cv2.resize(seg, (int(w * 0.25 + 0.5), int(h * 0.25 + 0.5)),
                                                interpolation=cv2.INTER_LINEAR))
            for i in range(top, down + 1):
                for j in range(left, right + 1):
                    cur = torch.zeros(mask_feat_size, dtype=torch.uint8)
                    cur[:small.shape[0], :small.shape[1]] = small
                    ins.append(cur)
                    ind[i * S + j] = True
                    order.append(i * S + j)
        out[0].append(cate.numpy())
        out[1].append(ind.numpy())
        out[2].append(np.array(order, dtype=np.int64))
        out[3].append(torch.stack(ins).numpy() if ins else np.zeros((0,) + tuple(mask_feat_size), np.uint8))
    return out


def _random_instances(rng, n, h, w):
    masks = np.zeros((n, h, w), dtype=np.uint8)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for k in range(n):
        bw, bh = rng.randint(3, w // 2), rng.randint(3, h // 2)
        x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
        blob = (rng.rand(bh, bw) < 0.7).astype(np.uint8)
        masks[k, y0:y0 + bh, x0:x0 + bw] = blob
        # sub-pixel legacy boxes like resized polygons
        boxes[k] = [x0 + rng.rand(), y0 + rng.rand(), x0 + bw - 1 - rng.rand(), y0 + bh - 1 - rng.rand()]
    masks[n - 1] = 0  # an empty mask must be skipped
    return boxes, rng.randint(1, 6, size=n).astype(np.int64), masks


def test_targets_match_torch_transcription_random():
    rng = np.random.RandomState(123)
    ranges, grids = ((1, 24), (12, 48), (24, 96)), (12, 8, 5)
    total_dup = 0
    for trial in range(12):
        h, w = [(96, 128), (128, 96), (64, 160)][trial % 3]
        canvas = (h // 4 + 8 * (trial % 2), w // 4)  # odd trials: canvas taller than the image
        boxes, labels, masks = _random_instances(rng, 8, h, w)
        mine = solov2_target_single(boxes, labels, masks, canvas, scale_ranges=ranges, num_grids=grids, sigma=0.2)
        ref = _official_target_torch(boxes, labels, masks, canvas, ranges, grids, 0.2)
        for a, b in zip(mine, ref):
            for la, lb in zip(a, b):
                assert la.shape == lb.shape and la.dtype == lb.dtype
                np.testing.assert_array_equal(la, lb)
        total_dup += sum(len(g) - len(np.unique(g)) for g in mine[2])
    assert total_dup > 0, "random cases should include duplicated cells"


def test_float32_floor_division_quirk():
    """Centre exactly on a cell border: float32 (192/768) // float32(1/36) = 8, exact arithmetic gives 9."""
    masks = np.zeros((1, 448, 768), np.uint8)
    masks[0, 12:213, 32:353] = 1                       # centre of mass exactly (x, y) = (192, 112)
    boxes = np.array([[32, 12, 352, 212]], np.float32)
    args = (boxes, np.array([3]), masks, (112, 192), ((1, 1000),), (36,), 0.2)
    mine = solov2_target_single(*args[:4], scale_ranges=args[4], num_grids=args[5], sigma=args[6])
    ref = _official_target_torch(*args)
    for a, b in zip(mine, ref):
        np.testing.assert_array_equal(a[0], b[0])
    rows, cols = np.divmod(mine[2][0], 36)
    assert rows.min() == 7 and cols.min() == 7          # float64 arithmetic would start at 8


def test_center_of_mass_matches_torch():
    rng = np.random.RandomState(0)
    m = (rng.rand(6, 200, 300) < 0.4).astype(np.uint8)
    m[0] = 0
    cx, cy = center_of_mass(m)
    mt = torch.from_numpy(m)
    m00 = mt.sum(dim=-1).sum(dim=-1).clamp(min=1e-6)
    tx = (mt * torch.arange(300, dtype=torch.float32)).sum(dim=-1).sum(dim=-1) / m00
    ty = (mt * torch.arange(200, dtype=torch.float32)[:, None]).sum(dim=-1).sum(dim=-1) / m00
    np.testing.assert_array_equal(cx, tx.numpy())
    np.testing.assert_array_equal(cy, ty.numpy())


def test_downscale_rule():
    rng = np.random.RandomState(1)
    m = (rng.rand(64, 96) < 0.5).astype(np.uint8)
    rule = (m[1::4, 1::4].astype(int) + m[1::4, 2::4] + m[2::4, 1::4] + m[2::4, 2::4]) >= 2
    np.testing.assert_array_equal(downscale_mask(m).astype(bool), rule)


def test_pack_targets_order_padding_truncation():
    cate = [np.zeros((3, 3), np.int64), np.zeros((2, 2), np.int64)]
    cate[0][1, 2], cate[1][0, 1] = 4, 2
    ind = [np.zeros(9, bool), np.zeros(4, bool)]
    ind[0][5] = ind[1][1] = True
    orders = [np.array([5, 5]), np.array([1])]
    ins = [np.stack([np.full((2, 2), 1, np.uint8), np.eye(2, dtype=np.uint8)]), np.ones((1, 2, 2), np.uint8)]
    p = pack_targets(cate, ind, orders, ins, max_pos=5)
    np.testing.assert_array_equal(p["cate_target"][[5, 10]], [4, 2])
    np.testing.assert_array_equal(p["pos_cell"], [5, 5, 10, 0, 0])
    np.testing.assert_array_equal(p["pos_valid"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(p["pos_mask"][1], np.eye(2))
    assert p["num_pos_cells"] == 2 and not p["pos_mask"][3:].any()
    with pytest.warns(UserWarning, match="max_pos=2"):
        q = pack_targets(cate, ind, orders, ins, max_pos=2, name="x.jpg")
    np.testing.assert_array_equal(q["pos_cell"], [5, 5])
    assert q["num_pos_cells"] == 2


def test_empty_gt_gives_background_targets():
    cate, ind, order, ins = solov2_target_single(np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                                                 np.zeros((0, 64, 64), np.uint8), (16, 16), scale_ranges=LIGHT_RANGES,
                                                 num_grids=GRIDS, sigma=0.2)
    assert all(not c.any() for c in cate) and all(len(o) == 0 for o in order)
    assert all(x.shape == (0, 16, 16) for x in ins)
    p = pack_targets(cate, ind, order, ins, max_pos=4)
    assert p["num_pos_cells"] == 0 and p["pos_valid"].sum() == 0


def test_flip_and_multiscale():
    h, w = 40, 60
    mask = np.zeros((1, h, w), np.uint8)
    mask[0, 10:20, 5:25] = 1
    s = dict(img=np.random.RandomState(0).randint(0, 255, (h, w, 3)).astype(np.uint8),
             gt_bboxes=np.array([[5, 10, 24, 19]], np.float32), gt_labels=np.array([1]), gt_masks=mask)
    f = flip_sample(s)
    cols = np.nonzero(f["gt_masks"][0].any(0))[0]
    np.testing.assert_array_equal(f["gt_bboxes"][0], [cols.min(), 10, cols.max(), 19])
    np.testing.assert_array_equal(f["img"], s["img"][:, ::-1])
    scales = [(90, 60), (90, 50), (90, 40)]
    rng = np.random.RandomState(0)
    seen = {select_scale(scales, rng) for _ in range(50)}
    assert seen == set(scales)
    r = resize_sample(s, (90, 50))
    assert r["img"].shape[:2] == r["gt_masks"].shape[1:] == (int(h * 1.25 + .5), int(w * 1.25 + .5))
    assert r["gt_bboxes"].max() <= r["img"].shape[1] - 1
    always = train_transform(s, np.random.RandomState(3), scales=[(90, 50)], flip_ratio=1.0, **NORM)
    assert always["flip"] and always["img"].shape[0] % 32 == 0 and always["gt_masks"].shape[1:] == (64, 96)
