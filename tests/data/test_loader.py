"""Training batches: few static shapes in graph mode (canvas buckets, positive rows 128 x a power of two)."""
import numpy as np
import pytest
from conftest import REPO, SHARED

from solov2.config import load_config
from solov2.data.coco import CocoDataset
from solov2.data.loader import TrainLoader, canvas_buckets, epoch_batches, pick_canvas, trim_positives

DATA = SHARED / "datasets" / "trashcan_mini"
CFG = REPO / "configs" / "solov2" / "solov2_light_448_r18_fpn_8gpu_3x_trashcan.py"
SCALES = [(768, 512), (768, 480), (768, 448), (768, 416), (768, 384), (768, 352)]


def test_buckets_one_per_scale_and_orientation():
    b = canvas_buckets(SCALES)
    assert len(b) == 12
    assert set(b) == {(s, 768) for _, s in SCALES} | {(768, s) for _, s in SCALES}
    assert b[0] in {(352, 768), (768, 352)} and b[-1] in {(512, 768), (768, 512)}
    assert canvas_buckets([(1333, 800)]) == [(800, 1344), (1344, 800)]        # rounded up to 32
    assert pick_canvas(384, 704, b) == (384, 768)
    assert pick_canvas(385, 704, b) == (416, 768)
    assert pick_canvas(704, 384, b) == (768, 384)
    assert pick_canvas(544, 768, b) is None                                    # nothing holds it: own canvas


@pytest.mark.parametrize("images, world", [(40, 3), (6, 8), (2, 8), (1, 3), (13, 2)])
def test_every_rank_gets_the_same_number_of_batches(images, world):
    """The ranks run the same number of steps (else the collectives of a step would not match, and the job hangs),
    also with fewer batches than ranks; the epoch's batches are dealt whole; orientations never mix in a batch."""
    flags = [i % 3 == 0 for i in range(images)]
    per_rank = [epoch_batches(flags, 2, seed=7, epoch=1, world=world, rank=r) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) >= 1
    dealt = [b for r in per_rank for b in r]
    assert {i for b in dealt for i in b} == set(range(images))               # no image left out
    assert all(len(b) == 2 and len({flags[i] for i in b}) == 1 for b in dealt)
    whole = epoch_batches(flags, 2, seed=7, epoch=1)                          # world 1: the epoch's order
    merged = [per_rank[i % world][i // world] for i in range(len(dealt))]
    assert merged[:len(whole)] == whole and merged[len(whole):] == (whole * world)[:len(merged) - len(whole)]


@pytest.mark.parametrize("need, rows", [(0, 128), (1, 128), (128, 128), (129, 256), (300, 512), (512, 512)])
def test_positive_rows_are_powers_of_two(need, rows):
    valid = np.zeros((2, 512), np.float32)
    valid[1, :need] = 1
    batch = dict(pos_cell=np.zeros((2, 512), np.int32), pos_mask=np.zeros((2, 512, 4, 4), np.uint8),
                 pos_valid=valid)
    out = trim_positives(batch)
    assert out["pos_cell"].shape == (2, rows) and out["pos_mask"].shape[1] == rows
    assert out["pos_valid"].sum() == need                                       # nothing dropped


def epoch_shapes(buckets: bool):
    cfg = load_config(CFG, [f"data.train.ann_file={DATA}/annotations/instances_train_trashcan.json",
                            f"data.train.img_prefix={DATA}/train/", f"data.canvas_buckets={buckets}"])
    loader = TrainLoader(CocoDataset(cfg.data.train_ann_file, cfg.data.train_img_prefix), cfg, seed=0, workers=2)
    return loader, list(loader.epoch(0))


def test_official_multiscale_epoch_uses_few_canvases():
    """The 6 official TrashCan scales: one epoch of trashcan_mini gives 15 batch canvases; buckets give <= 6."""
    loader, batches = epoch_shapes(True)
    _, official = epoch_shapes(False)
    canvases = {b["img"].shape[2:] for b in batches}
    assert canvases <= set(loader.buckets) and len(canvases) <= 6
    assert len({b["img"].shape[2:] for b in official}) > 10
    assert len(batches) == len(official) > 50   # 118 images with annotations, batches of 2
    for b, o in zip(batches, official):
        assert [m["filename"] for m in b["img_metas"]] == [m["filename"] for m in o["img_metas"]]
        hc, wc = max(m["pad_shape"][0] for m in o["img_metas"]), max(m["pad_shape"][1] for m in o["img_metas"])
        assert o["img"].shape[2:] == (hc, wc)                                  # official: max H, W of the batch
        assert pick_canvas(hc, wc, loader.buckets) == b["img"].shape[2:]      # bucketed: smallest bucket
        np.testing.assert_array_equal(b["img"][:, :, :hc, :wc], o["img"])      # same pixels, more zero padding
        assert not b["img"][:, :, hc:, :].any() and not b["img"][:, :, :, wc:].any()
        assert b["pos_mask"].shape[2:] == (b["img"].shape[2] // 4, b["img"].shape[3] // 4)
        assert b["pos_cell"].shape[1] in (128, 256, 512)
