"""Official SOLOv2 train pipeline (mmdet 1.x Resize / RandomFlip / Normalize / Pad + mmcv collate) in NumPy/cv2,
plus the static-shape target packing used by the MindSpore train step.

A *sample* is the dict returned by `solov2.data.coco.CocoDataset`:
img BGR uint8 (H, W, 3), gt_bboxes float32 (n, 4) legacy, gt_labels int64 (n,), gt_masks uint8 (n, H, W),
filename, image_id. Every function returns a new dict and leaves its input alone.
"""
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from solov2.data.targets import pack_targets, solov2_target_single
from solov2.data.transforms import normalize, pad_to_multiple, resize_keep_ratio

def select_scale(scales: Sequence[Tuple[int, int]], rng) -> Tuple[int, int]:
    """multiscale_mode='value': one of `scales` ((long, short) pairs), drawn with ``rng.randint(len(scales))``.

    `rng` is a ``np.random.RandomState`` (official: the global ``np.random``). A single scale draws nothing.
    """
    if len(scales) == 1:
        return tuple(scales[0])
    return tuple(scales[rng.randint(len(scales))])


def resize_sample(sample: dict, scale: Tuple[int, int]) -> dict:
    """Resize(keep_ratio=True): image cv2 INTER_LINEAR, boxes * sf clipped to the new image, masks nearest.

    Sizes follow mmcv.imrescale: ``sf = min(long/max(h,w), short/min(h,w))``, ``new = int(x*sf + 0.5)``.
    Adds ori_shape, img_shape (h', w', 3) and scale_factor (float).
    """
    img, sf = resize_keep_ratio(sample["img"], scale)
    nh, nw = img.shape[:2]
    bboxes = sample["gt_bboxes"] * sf  # float32 * python float stays float32 (numpy<2 value-based casting)
    bboxes[:, 0::2] = np.clip(bboxes[:, 0::2], 0, nw - 1)
    bboxes[:, 1::2] = np.clip(bboxes[:, 1::2], 0, nh - 1)
    # mmcv imrescale(mask, sf, 'nearest') == cv2.INTER_NEAREST to the same size as the image; cv2 is called per
    # mask because channel counts above 512 are not supported.
    masks = np.zeros((len(sample["gt_masks"]), nh, nw), dtype=np.uint8)
    for k, m in enumerate(sample["gt_masks"]):
        masks[k] = cv2.resize(m, (nw, nh), interpolation=cv2.INTER_NEAREST)
    out = dict(sample, img=img, gt_bboxes=bboxes.astype(np.float32), gt_masks=masks)
    out.update(ori_shape=tuple(sample["img"].shape), img_shape=tuple(img.shape), scale_factor=sf)
    return out


def flip_sample(sample: dict) -> dict:
    """Horizontal flip of image, boxes (``x1' = W - x2 - 1``, ``x2' = W - x1 - 1``, W = image width) and masks."""
    w = sample["img"].shape[1]
    b = sample["gt_bboxes"]
    flipped = b.copy()
    flipped[:, 0] = w - b[:, 2] - 1
    flipped[:, 2] = w - b[:, 0] - 1
    return dict(sample, img=np.ascontiguousarray(sample["img"][:, ::-1]), gt_bboxes=flipped,
                gt_masks=np.ascontiguousarray(sample["gt_masks"][:, :, ::-1]), flip=True)


def normalize_pad_sample(sample: dict, *, mean: Sequence[float], std: Sequence[float], to_rgb: bool,
                         size_divisor: int) -> dict:
    """Normalize (float32, BGR->RGB, (x-mean)/std), then zero-pad image and masks bottom/right to `size_divisor`.
    (mean, std: RGB, the config's img_norm_cfg; no defaults here, so the config is the one source.)

    img becomes float32 (Hp, Wp, 3); gt_masks uint8 (n, Hp, Wp); adds pad_shape (Hp, Wp, 3).
    """
    img = pad_to_multiple(normalize(sample["img"], mean, std, to_rgb), size_divisor)
    hp, wp = img.shape[:2]
    masks = sample["gt_masks"]
    padded = np.zeros((len(masks), hp, wp), dtype=np.uint8)
    padded[:, :masks.shape[1], :masks.shape[2]] = masks
    return dict(sample, img=img, gt_masks=padded, pad_shape=tuple(img.shape))


def train_transform(sample: dict, rng, *, scales: Sequence[Tuple[int, int]], flip_ratio: float,
                    mean: Sequence[float], std: Sequence[float], to_rgb: bool, size_divisor: int) -> dict:
    """Official train pipeline for one sample: Resize('value', keep_ratio) -> RandomFlip -> Normalize -> Pad.

    Random draws, in the official order and number: ``rng.randint`` for the scale (only if several scales),
    then always one ``rng.rand()``, flip iff ``< flip_ratio``. `rng`: ``np.random.RandomState`` (official: the
    global ``np.random``), so a seeded RandomState replays the official per-sample choices.
    Returns the sample with img float32 (Hp, Wp, 3) normalized RGB, gt_masks uint8 (n, Hp, Wp), gt_bboxes in
    resized-image pixels, plus ori_shape, img_shape, pad_shape, scale_factor, flip.
    """
    out = resize_sample(sample, select_scale(scales, rng))
    out["flip"] = False
    if rng.rand() < flip_ratio:
        out = flip_sample(out)
    return normalize_pad_sample(out, mean=mean, std=std, to_rgb=to_rgb, size_divisor=size_divisor)


def collate(samples: Sequence[dict], canvas: Optional[Tuple[int, int]] = None, *,
            scale_ranges: Sequence[Tuple[int, int]], num_grids: Sequence[int], sigma: float, max_pos: int) -> dict:
    """Batch transformed samples and build static-shape SOLOv2 targets.

    Images are zero-padded bottom/right to a common canvas (Hc, Wc): by default the max H, W of the batch
    (official mmcv collate), or the given fixed `canvas` (graph-mode buckets; must cover every image and be a
    multiple of 32). The grid cells span the canvas (``upsampled_size = 4 * mask_feat_size``), so a canvas
    bigger than the official batch canvas moves the grid assignment (and the network's padded features)
    relative to the official training. The masks are not padded (as official); targets zero-fill them.

    scale_ranges/num_grids/sigma: the config's head settings (R101: ((1,96),(48,192),(96,384),(192,768),
    (384,2048)), (40,36,24,16,12), 0.2; light-448: ((1,56),(28,112),(56,224),(112,448),(224,896))). `max_pos`: rows of positive targets per image
    (see `solov2.data.targets.pack_targets`); at most 9 cells x 3 levels per instance. Size it from the data: the
    loss materialises (N, max_pos, Hc/4, Wc/4) float32 mask logits (trashcan_mini train, light-448, largest
    scale (768, 512): max 120 positives per image, 99th percentile 74).

    Returns dict:
        img          float32 (N, 3, Hc, Wc)
        cate_target  int32   (N, num_cells)      num_cells = sum(S*S)
        pos_cell     int32   (N, max_pos)
        pos_mask     uint8   (N, max_pos, Hc/4, Wc/4)
        pos_valid    float32 (N, max_pos)
        num_pos_cells int32  (N,)
        num_ins      float32 ()                  unique positive cells in the batch (focal avg_factor - 1)
        img_metas    list of dict (filename, image_id, ori_shape, img_shape, pad_shape, scale_factor, flip)
    """
    hs = [s["img"].shape[0] for s in samples]
    ws = [s["img"].shape[1] for s in samples]
    if canvas is None:
        hc, wc = max(hs), max(ws)
    else:
        hc, wc = int(canvas[0]), int(canvas[1])
        if max(hs) > hc or max(ws) > wc:
            raise ValueError(f"canvas {hc}x{wc} is smaller than a batch image ({max(hs)}x{max(ws)})")
    if hc % 4 or wc % 4:
        raise ValueError(f"canvas {hc}x{wc} must be a multiple of 4 (of 32 for the network)")
    mask_feat_size = (hc // 4, wc // 4)
    n = len(samples)
    img = np.zeros((n, 3, hc, wc), dtype=np.float32)
    packs, metas = [], []
    for i, s in enumerate(samples):
        img[i, :, :hs[i], :ws[i]] = s["img"].transpose(2, 0, 1)
        levels = solov2_target_single(s["gt_bboxes"], s["gt_labels"], s["gt_masks"], mask_feat_size,
                                      scale_ranges=scale_ranges, num_grids=num_grids, sigma=sigma)
        packs.append(pack_targets(*levels, max_pos=max_pos, name=s.get("filename")))
        metas.append({k: s.get(k) for k in ("filename", "image_id", "ori_shape", "img_shape", "pad_shape",
                                            "scale_factor", "flip")})
    out = {k: np.stack([p[k] for p in packs]) for k in ("cate_target", "pos_cell", "pos_mask", "pos_valid")}
    out["num_pos_cells"] = np.array([p["num_pos_cells"] for p in packs], dtype=np.int32)
    out["num_ins"] = np.float32(out["num_pos_cells"].sum())
    out["img"] = img
    out["img_metas"] = metas
    return out


__all__ = ["select_scale", "resize_sample", "flip_sample", "normalize_pad_sample",
           "train_transform", "collate"]
