"""SOLOv2 target assignment (official ``SOLOv2Head.solov2_target_single``) and static-shape packing, in NumPy.

The official code does this arithmetic on float32 torch tensors; here the same operations are done on float32
NumPy arrays, whose rounding is the same for every operation used (``*``, ``-``, ``/`` by a scalar, ``sqrt`` and
``//``, which both libraries implement as Python-style fmod-based floor division). The one place where the
results can differ is the centre of mass: the official float32 reduction is inexact (and reduction-order
dependent) once a mask's coordinate sum exceeds 2**24; here the sums are exact integers rounded once to
float32. The two agree for every mask whose Σx and Σy stay below 2**24 (e.g. all masks up to ~40k pixels on
an 800-px canvas), and can only differ on a grid decision if the centre lies within an ulp of a cell border.
"""
import warnings
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np


def center_of_mass(masks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Official ``center_of_mass``: pixel-index coordinates, ``Σ m·x / max(Σ m, 1e-6)``.

    masks: uint8/bool (n, H, W). Returns (cx, cy), float32 (n,) each.
    """
    # exact integer moments, summed in int64 without an int64 copy of the masks (8 bytes per pixel and instance)
    m00 = np.maximum(masks.sum(axis=(1, 2), dtype=np.int64).astype(np.float32), np.float32(1e-6))
    m10 = (masks.sum(axis=1, dtype=np.int64) @ np.arange(masks.shape[2], dtype=np.int64)).astype(np.float32)
    m01 = (masks.sum(axis=2, dtype=np.int64) @ np.arange(masks.shape[1], dtype=np.int64)).astype(np.float32)
    return m10 / m00, m01 / m00


def _grid_index(x: np.ndarray, size: int, num_grid: int) -> np.ndarray:
    """int(((x / size) // (1. / S))) with float32 operands, as the official torch expression. x float32 (n,)."""
    q = (x / np.float32(size)).astype(np.float32)
    return np.floor_divide(q, np.float32(1.0 / num_grid)).astype(np.float32).astype(np.int64)


def downscale_mask(mask: np.ndarray, factor: int = 4) -> np.ndarray:
    """mmcv.imrescale(mask, 1/factor) with its default cv2 INTER_LINEAR: uint8 (H, W) -> (int(H/f+.5), int(W/f+.5)).

    For {0,1} masks and f=4 a pixel is 1 iff at least 2 of ``m[4y+1:4y+3, 4x+1:4x+3]`` are 1.
    """
    h, w = mask.shape
    size = (int(w * (1.0 / factor) + 0.5), int(h * (1.0 / factor) + 0.5))
    return cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)


def solov2_target_single(gt_bboxes: np.ndarray, gt_labels: np.ndarray, gt_masks: np.ndarray,
                         mask_feat_size: Tuple[int, int], *, scale_ranges: Sequence[Tuple[float, float]],
                         num_grids: Sequence[int], sigma: float):
    """Targets of one image, exactly as the official ``solov2_target_single``.

    Args:
        gt_bboxes: float32 (n, 4) legacy boxes (x2 = x1 + w - 1) in pixels of the resized image.
        gt_labels: int (n,) in 1..C.
        gt_masks: uint8/bool (n, Hp, Wp) at the image's own pad shape (not the batch canvas).
        mask_feat_size: (h4, w4) = batch canvas / 4; the grid spans ``(4*h4, 4*w4)``.
        scale_ranges: per level inclusive (lo, hi) on ``sqrt((x2-x1)*(y2-y1))``; ranges may overlap.
        num_grids: per level S.
        sigma: centre-region scale.

    Returns four per-level lists:
        cate_label    int64 (S, S)       0 = background, else label; overlapping instances: last wins
        ins_ind_label bool  (S*S,)       positive cells
        grid_order    int64 (k,)         ``i*S + j`` per positive, in assignment order (duplicates kept)
        ins_label     uint8 (k, h4, w4)  1/4-scale mask per grid_order entry, zero-filled to the canvas
    """
    h4, w4 = int(mask_feat_size[0]), int(mask_feat_size[1])
    up_h, up_w = 4 * h4, 4 * w4
    b = np.asarray(gt_bboxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(gt_labels).reshape(-1)
    masks = np.asarray(gt_masks)
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    areas = np.sqrt(bw * bh)
    half_w = bw * np.float32(0.5) * np.float32(sigma)
    half_h = bh * np.float32(0.5) * np.float32(sigma)
    if len(b):
        center_w, center_h = center_of_mass(masks)
        valid = masks.reshape(len(b), -1).any(axis=1)
    small = {}  # instance index -> downscaled mask, computed once for both levels it may hit

    cate_labels, ind_labels, grid_orders, ins_labels = [], [], [], []
    for (lo, hi), num_grid in zip(scale_ranges, num_grids):
        cate_label = np.zeros((num_grid, num_grid), dtype=np.int64)
        ind_label = np.zeros(num_grid * num_grid, dtype=bool)
        order: List[int] = []
        rows: List[np.ndarray] = []
        hits = np.nonzero((areas >= lo) & (areas <= hi))[0]
        if len(hits):
            # the official expressions, vectorised over the hit instances (elementwise float32 ops)
            cw, ch, hw, hh = center_w[hits], center_h[hits], half_w[hits], half_h[hits]
            coord_w, coord_h = _grid_index(cw, up_w, num_grid), _grid_index(ch, up_h, num_grid)
            top_box = np.maximum(0, _grid_index(ch - hh, up_h, num_grid))
            down_box = np.minimum(num_grid - 1, _grid_index(ch + hh, up_h, num_grid))
            left_box = np.maximum(0, _grid_index(cw - hw, up_w, num_grid))
            right_box = np.minimum(num_grid - 1, _grid_index(cw + hw, up_w, num_grid))
            top, down = np.maximum(top_box, coord_h - 1), np.minimum(down_box, coord_h + 1)
            left, right = np.maximum(coord_w - 1, left_box), np.minimum(right_box, coord_w + 1)
        for n, k in enumerate(hits):
            if not valid[k]:
                continue
            t, d, l, r = int(top[n]), int(down[n]), int(left[n]), int(right[n])
            cate_label[t:d + 1, l:r + 1] = labels[k]
            if k not in small:
                m = downscale_mask(np.ascontiguousarray(masks[k], dtype=np.uint8))
                if m.shape[0] > h4 or m.shape[1] > w4:
                    raise ValueError(f"mask {masks[k].shape} does not fit the canvas {up_h}x{up_w}")
                full = np.zeros((h4, w4), dtype=np.uint8)
                full[:m.shape[0], :m.shape[1]] = m
                small[k] = full
            for i in range(t, d + 1):
                for j in range(l, r + 1):
                    ind_label[i * num_grid + j] = True
                    order.append(i * num_grid + j)
                    rows.append(small[k])
        cate_labels.append(cate_label)
        ind_labels.append(ind_label)
        grid_orders.append(np.array(order, dtype=np.int64))
        ins_labels.append(np.stack(rows) if rows else np.zeros((0, h4, w4), dtype=np.uint8))
    return cate_labels, ind_labels, grid_orders, ins_labels


def pack_targets(cate_labels: Sequence[np.ndarray], ins_ind_labels: Sequence[np.ndarray],
                 grid_orders: Sequence[np.ndarray], ins_labels: Sequence[np.ndarray], max_pos: int,
                 name: Optional[str] = None) -> dict:
    """Per-level targets of one image -> fixed-size arrays for a static-shape train step.

    Cells are numbered over the concatenated levels (level 0 first, row-major within a level), the order of
    the head's concatenated ``(S*S)`` outputs.

    Returns dict:
        cate_target   int32   (num_cells,)       0 = background, else label 1..C
        pos_cell      int32   (max_pos,)         level offset + grid_order, level-then-grid_order order; 0 = pad
        pos_mask      uint8   (max_pos, h4, w4)  ins_label rows; zeros for padding
        pos_valid     float32 (max_pos,)         1 for real positives, 0 for padding
        num_pos_cells int                        unique positive cells (= Σ ins_ind_label)

    Deviation: with more than `max_pos` positives only the first `max_pos` are kept (a warning names `name`);
    the dice loss then averages over the kept ones, while `num_pos_cells` (focal normaliser) still counts all.
    """
    offsets = np.cumsum([0] + [c.size for c in cate_labels])
    cate_target = np.concatenate([c.reshape(-1) for c in cate_labels]).astype(np.int32)
    cells = np.concatenate([offsets[l] + np.asarray(g, dtype=np.int64) for l, g in enumerate(grid_orders)])
    masks = np.concatenate(list(ins_labels), axis=0)
    h4, w4 = masks.shape[1:]
    if len(cells) > max_pos:
        warnings.warn(f"{name or 'image'}: {len(cells)} positive cells > max_pos={max_pos}; "
                      f"keeping the first {max_pos}", stacklevel=2)
        cells, masks = cells[:max_pos], masks[:max_pos]
    k = len(cells)
    pos_cell = np.zeros(max_pos, dtype=np.int32)
    pos_cell[:k] = cells
    pos_mask = np.zeros((max_pos, h4, w4), dtype=np.uint8)
    pos_mask[:k] = masks
    pos_valid = np.zeros(max_pos, dtype=np.float32)
    pos_valid[:k] = 1.0
    num_pos = int(sum(int(np.count_nonzero(x)) for x in ins_ind_labels))
    return dict(cate_target=cate_target, pos_cell=pos_cell, pos_mask=pos_mask, pos_valid=pos_valid,
                num_pos_cells=num_pos)
