"""SOLOv2 inference post-processing in NumPy (runs on the host, outside the MindSpore graph).

Follows the official ``SOLOv2Head.get_seg_single`` and ``matrix_nms`` (WXinlong/SOLO) step by step, in
float32, so that every discrete decision (thresholds, sort order, NMS suppression) is the same as in the
reference implementation (WXinlong/SOLO mmdet/models/anchor_heads/solov2_head.py and mmdet/core/post_processing/
matrix_nms.py; the team's written description is docs/solov2_reference.md §5, §6, §11 in ../shared, not in this repo).

Public API:
    get_seg_single(cate_scores, kernels, mask_feat, img_shape, ori_shape, test_cfg, num_grids, strides)
        -> dict(masks, labels, scores, cells): the whole post-processing of one image
    matrix_nms(seg_masks, labels, scores, kernel, sigma, sum_masks) -> decayed scores
    dynamic_masks(kernels, mask_feat) -> soft masks; cell_strides(num_grids, strides) -> stride per cell
    masks_to_original(seg_preds, img_shape, ori_shape, mask_thr) -> binary masks of the original image
    resize_bilinear(x, out_hw, crop_hw=None) -> torch-equal bilinear resize of (n, h, w) float32
"""
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

# Candidates whose soft masks are computed at once while scoring them: bounds memory (an undertrained
# model can put thousands of (cell, class) pairs above score_thr; 128 masks of 200x336 are 34 MB).
_CANDIDATE_CHUNK = 128


def matrix_nms(seg_masks: np.ndarray, labels: np.ndarray, scores: np.ndarray, kernel: str = "gaussian",
               sigma: float = 2.0, sum_masks: Optional[np.ndarray] = None) -> np.ndarray:
    """Matrix NMS (SOLOv2): decay each score by its overlap with higher-scored masks of the same class.

    Args:
        seg_masks: bool (n, H, W), sorted by descending score.
        labels: int (n,) class channel of each mask.
        scores: float32 (n,) descending.
        kernel: 'gaussian' (exp(-sigma * iou^2)) or 'linear' (1 - iou).
        sigma: gaussian kernel parameter (unused for 'linear').
        sum_masks: float32 (n,) pixel count of each mask; computed from `seg_masks` if None.
    Returns:
        float32 (n,) decayed scores (`scores * coef`, coef in (0, 1]).
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"unknown matrix_nms kernel {kernel!r} (expected 'gaussian' or 'linear')")
    scores = np.asarray(scores, dtype=np.float32)
    n = len(scores)
    if n == 0:
        return np.zeros((0,), np.float32)
    flat = np.asarray(seg_masks).reshape(n, -1).astype(np.float32)
    if sum_masks is None:
        sum_masks = flat.sum(axis=1)
    sum_masks = np.asarray(sum_masks, dtype=np.float32)
    # Pixel counts are integers < 2**24, so the float32 matmul and the union below are exact.
    inter = flat @ flat.T
    union = sum_masks[None, :] + sum_masks[:, None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):   # lower triangle may hold 0/0; triu drops it
        iou = np.triu(inter / union, k=1)
    labels = np.asarray(labels)
    same_label = np.triu(labels[None, :] == labels[:, None], k=1).astype(np.float32)
    decay_iou = iou * same_label
    # compensate[j]: how much mask j is itself suppressed by a higher-scored same-class mask.
    compensate = decay_iou.max(axis=0)[:, None]            # broadcast over columns: C[i, j] = comp[i]
    if kernel == "gaussian":
        neg_sigma = np.float32(-1 * sigma)
        decay = np.exp(neg_sigma * (decay_iou * decay_iou)) / np.exp(neg_sigma * (compensate * compensate))
    else:
        # A mask identical to an earlier same-class mask has comp = 1: x/0 gives inf/nan exactly like the
        # official code (documented pitfall), so only the warning is silenced.
        with np.errstate(divide="ignore", invalid="ignore"):
            decay = (np.float32(1) - decay_iou) / (np.float32(1) - compensate)
    # Minimum over all rows, including i >= j (those give f(0)/f(comp_i) >= 1), as in the official code.
    coef = decay.min(axis=0)
    return (scores * coef).astype(np.float32)


def cell_strides(num_grids: Sequence[int], strides: Sequence[int]) -> np.ndarray:
    """float32 (sum S^2,): the FPN stride of every grid cell, levels concatenated (cell-index order)."""
    return np.concatenate([np.full(s * s, st, np.float32) for s, st in zip(num_grids, strides)])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic in the same form as torch (1 / (1 + exp(-x))); exp overflow -> exactly 0."""
    out = np.negative(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += np.float32(1)
    return np.reciprocal(out, out=out)


def dynamic_masks(kernels: np.ndarray, mask_feat: np.ndarray) -> np.ndarray:
    """Dynamic 1x1 convolution of the mask features with per-candidate kernels, then sigmoid.

    Args:
        kernels: float32 (K, E).
        mask_feat: float32 (E, h, w).
    Returns:
        float32 (K, h, w) soft mask probabilities.
    """
    e, h, w = mask_feat.shape
    logits = np.asarray(kernels, np.float32) @ np.asarray(mask_feat, np.float32).reshape(e, h * w)
    return _sigmoid(logits).reshape(-1, h, w)


def mask_statistics(kernels: np.ndarray, mask_feat: np.ndarray, mask_thr: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel count and summed probability of the binary mask of every candidate, without keeping the masks.

    Args:
        kernels: float32 (K, E); mask_feat: float32 (E, h, w).
    Returns:
        sum_masks float32 (K,) = #(p > mask_thr); inside float32 (K,) = sum of p over those pixels.
    """
    k = len(kernels)
    sum_masks, inside = np.zeros(k, np.float32), np.zeros(k, np.float32)
    thr = np.float32(mask_thr)
    for start in range(0, k, _CANDIDATE_CHUNK):
        stop = min(start + _CANDIDATE_CHUNK, k)
        probs = dynamic_masks(kernels[start:stop], mask_feat).reshape(stop - start, -1)
        binary = probs > thr
        sum_masks[start:stop] = binary.sum(axis=1)
        inside[start:stop] = np.where(binary, probs, np.float32(0)).sum(axis=1, dtype=np.float32)
    return sum_masks, inside


def _linear_taps(in_size: int, out_size: int, n_out: int):
    """Source indices and weights of torch bilinear (align_corners=False) for the first n_out outputs.

    Torch computes the source coordinate in float32 as ratio * (dst + 0.5) - 0.5 with ratio = in/out,
    and the compiled kernel contracts it into one FMA (verified against torch 2.13: single rounding
    matches, two roundings are off by up to 3e-5 for non-integer ratios, as is cv2, which uses float64
    coordinates). The float64 product of two float32 values is exact, so float64 -> float32 emulates the FMA.
    """
    if in_size == out_size:
        idx = np.arange(n_out)
        return idx, idx, np.ones(n_out, np.float32), np.zeros(n_out, np.float32)
    ratio = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(ratio) * dst.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))                    # edge clamp on the left/top
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    i1 = i0 + (i0 < in_size - 1)                            # edge clamp on the right/bottom
    return i0, i1, np.float32(1) - lam1, lam1


def _taps_2d(in_hw, out_hw, crop_hw):
    return _linear_taps(in_hw[0], out_hw[0], crop_hw[0]), _linear_taps(in_hw[1], out_hw[1], crop_hw[1])


def _apply_taps(x: np.ndarray, taps) -> np.ndarray:
    """float32 (h, w) -> (Hc, Wc): width pass then height pass, torch's order of float32 operations."""
    (r0, r1, b0, b1), (c0, c1, a0, a1) = taps
    x = x[:int(r1.max()) + 1] if len(r1) else x[:0]         # only the source rows the height pass reads
    t = x.take(c0, axis=1) * a0 + x.take(c1, axis=1) * a1
    return t.take(r0, axis=0) * b0[:, None] + t.take(r1, axis=0) * b1[:, None]


def resize_bilinear(x: np.ndarray, out_hw: Tuple[int, int], crop_hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Bilinear resize equal to ``F.interpolate(x[None], out_hw, mode='bilinear')[0]`` (align_corners=False).

    Half-pixel mapping, edge clamp, no antialias, torch's float32 coordinates; max |diff| vs torch 2.13
    ~2e-7 (cv2.INTER_LINEAR is off by up to 4e-5 for non-integer ratios, see `_linear_taps`).
    Args:
        x: float32 (n, h, w).
        out_hw: (H, W) output size the sampling grid is defined for.
        crop_hw: optional (Hc, Wc) <= (H, W): only the top-left crop ``[:Hc, :Wc]`` of the output is computed
            (the values equal the full resize followed by the crop).
    Returns:
        float32 (n, Hc, Wc).
    """
    x = np.asarray(x, np.float32)
    n, h, w = x.shape
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    crop_hw = out_hw if crop_hw is None else (int(crop_hw[0]), int(crop_hw[1]))
    taps = _taps_2d((h, w), out_hw, crop_hw)
    out = np.empty((n,) + crop_hw, np.float32)
    for i in range(n):                   # one mask at a time: stays in cache, faster than batched gathers
        out[i] = _apply_taps(x[i], taps)
    return out


def masks_to_original(seg_preds: np.ndarray, img_shape: Sequence[int], ori_shape: Sequence[int],
                      mask_thr: float) -> np.ndarray:
    """Soft 1/4-resolution masks -> binary masks of the original image, as the official code does it.

    Upsample x4 to the padded input size, crop to the resized (unpadded) image, resize to the original
    image size (both bilinear, align_corners=False), then threshold (strict >).
    Args:
        seg_preds: float32 (n, h, w) probabilities at 1/4 of the padded input.
        img_shape: (h_img, w_img[, c]) resized image size before padding.
        ori_shape: (H0, W0[, c]) original image size.
    Returns:
        bool (n, H0, W0).
    """
    n, h, w = seg_preds.shape
    img_h, img_w = int(img_shape[0]), int(img_shape[1])
    ori_h, ori_w = int(ori_shape[0]), int(ori_shape[1])
    taps = _taps_2d((img_h, img_w), (ori_h, ori_w), (ori_h, ori_w))
    thr = np.float32(mask_thr)
    out = np.empty((n, ori_h, ori_w), bool)
    for i in range(n):
        # x4 upsampling: the ratio 1/4 makes the float32 source coordinates exact, so cv2 (5x faster than
        # NumPy gathers) gives torch's values (max |diff| 1.2e-7). The second resize has an arbitrary
        # ratio, where cv2's float64 coordinates differ from torch's, hence `_apply_taps`.
        up = cv2.resize(np.ascontiguousarray(seg_preds[i], np.float32), (4 * w, 4 * h),
                        interpolation=cv2.INTER_LINEAR)[:img_h, :img_w]
        out[i] = _apply_taps(up, taps) > thr
    return out


def _empty_result(ori_shape: Sequence[int]) -> dict:
    return dict(masks=np.zeros((0, int(ori_shape[0]), int(ori_shape[1])), bool),
                labels=np.zeros((0,), np.int64), scores=np.zeros((0,), np.float32),
                cells=np.zeros((0,), np.int64))


def _descending(scores: np.ndarray) -> np.ndarray:
    # Stable sort on -score: ties keep their current order (torch.argsort is unstable, but the official
    # results have no exact ties, so any tie-break matches them).
    return np.argsort(-scores, kind="stable")


def get_seg_single(cate_scores: np.ndarray, kernels: np.ndarray, mask_feat: np.ndarray,
                   img_shape: Sequence[int], ori_shape: Sequence[int], test_cfg,
                   num_grids: Sequence[int], strides: Sequence[int], debug: Optional[dict] = None) -> dict:
    """Instances of one image from the SOLOv2 head outputs (official get_seg_single, in NumPy).

    Args:
        cate_scores: float32 (sum S^2, C) category scores after sigmoid and points_nms; rows are the grid
            cells of all levels concatenated, row-major within a level.
        kernels: float32 (sum S^2, E) dynamic kernels, same row order.
        mask_feat: float32 (E, h, w) mask features at 1/4 of the padded input.
        img_shape: (h_img, w_img[, c]) resized image before padding; ori_shape: (H0, W0[, c]).
        test_cfg: `solov2.config.TestConfig` (score_thr, mask_thr, nms_pre, kernel, sigma, update_thr,
            max_per_img).
        num_grids, strides: per level grid size S and FPN stride.
        debug: optional dict; if given, intermediate arrays are stored in it (for parity tests):
            cand_cell/cand_label/cand_score (after score_thr, row-major (cell, class) order),
            cand_sum_mask, cand_keep_stride, sorted_cell/sorted_label/sorted_sum_mask/sorted_masks,
            sorted_score_before_nms, sorted_score_after_nms.
    Returns:
        dict(masks=bool (n, H0, W0), labels=int64 (n,) class channel 0..C-1, scores=float32 (n,) descending,
        cells=int64 (n,) grid-cell index); n = 0 (empty arrays) when nothing survives.
    """
    debug = {} if debug is None else debug
    cate_scores = np.asarray(cate_scores, np.float32)
    num_cells = int(sum(s * s for s in num_grids))
    if cate_scores.shape[0] != num_cells or kernels.shape[0] != num_cells:
        raise ValueError(f"expected {num_cells} cells (num_grids {tuple(num_grids)}), got cate "
                         f"{cate_scores.shape} and kernels {kernels.shape}")

    # 1. (cell, class) candidates: strict score threshold; np.nonzero is row-major like torch.nonzero.
    cells, labels = np.nonzero(cate_scores > np.float32(test_cfg.score_thr))
    scores = cate_scores[cells, labels]
    debug.update(cand_cell=cells, cand_label=labels, cand_score=scores)
    if len(scores) == 0:
        return _empty_result(ori_shape)

    # 2. a candidate's binary mask (1/4 resolution) must cover more pixels than its level's stride (strict).
    sum_masks, inside = mask_statistics(kernels[cells], mask_feat, test_cfg.mask_thr)
    keep = sum_masks > cell_strides(num_grids, strides)[cells]
    debug.update(cand_sum_mask=sum_masks, cand_keep_stride=keep)
    if not keep.any():
        return _empty_result(ori_shape)
    cells, labels, scores, sum_masks, inside = cells[keep], labels[keep], scores[keep], sum_masks[keep], inside[keep]

    # 3. maskness rescoring (mean probability inside the mask) comes before the nms_pre cut.
    scores = scores * (inside / sum_masks)
    order = _descending(scores)[:test_cfg.nms_pre]
    cells, labels, scores, sum_masks = cells[order], labels[order], scores[order], sum_masks[order]
    # Soft masks are recomputed for the <= nms_pre survivors only (same float32 matmul per row).
    seg_preds = dynamic_masks(kernels[cells], mask_feat)
    seg_masks = seg_preds > np.float32(test_cfg.mask_thr)
    debug.update(sorted_cell=cells, sorted_label=labels, sorted_sum_mask=sum_masks, sorted_masks=seg_masks,
                 sorted_score_before_nms=scores)

    # 4. Matrix NMS on the 1/4-resolution binary masks (padding included), then the update threshold.
    scores = matrix_nms(seg_masks, labels, scores, kernel=test_cfg.kernel, sigma=test_cfg.sigma,
                        sum_masks=sum_masks)
    debug.update(sorted_score_after_nms=scores)
    keep = scores >= np.float32(test_cfg.update_thr)
    if not keep.any():
        return _empty_result(ori_shape)
    order = np.flatnonzero(keep)[_descending(scores[keep])][:test_cfg.max_per_img]

    # 5. only the kept (<= max_per_img) soft masks are resized to the original image.
    masks = masks_to_original(seg_preds[order], img_shape, ori_shape, test_cfg.mask_thr)
    return dict(masks=masks, labels=labels[order].astype(np.int64), scores=scores[order].astype(np.float32),
                cells=cells[order].astype(np.int64))
