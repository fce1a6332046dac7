"""SOLOv2 losses in MindSpore with static shapes (GRAPH_MODE and PYNATIVE_MODE).

Positives are a fixed number P per image (`solov2.data.targets.pack_targets`), gathered by index and weighted by a
0/1 validity vector, so there is no boolean indexing and no data-dependent shape anywhere.

Official reference: ``SOLOv2Head.loss`` (solov2_head.py L184-269), ``dice_loss`` (L33-41) and the CUDA
``SigmoidFocalLossForward`` kernel. Deviation: a batch without any positive gives ``loss_ins = 0`` (and a finite
``loss_cate``) where the official code crashes on ``torch.cat([])``.
"""
import mindspore as ms
from mindspore import ops


def _log_sigmoid(x):
    """log(sigmoid(x)) = -softplus(-x) = min(x, 0) - log1p(exp(-|x|)); finite for every finite x."""
    return ops.minimum(x, 0.0) - ops.log1p(ops.exp(-ops.abs(x)))


def dice_loss(logits, target, valid=None):
    """Official per-instance dice loss on mask logits.

    ``p = sigmoid(logits)``, per instance over the last two axes: ``a = Σ p·t``, ``b = Σ p² + 0.001``,
    ``c = Σ t² + 0.001``, ``loss = 1 - 2a / (b + c)``.

    Args:
        logits: float32 (..., H, W) mask logits.
        target: (..., H, W) {0,1} masks, any numeric dtype (cast to float32).
        valid: optional float32 (...) weights; the loss is multiplied by it (0 for padding rows).
    Returns:
        float32 (...) per-instance loss.
    """
    p = ops.sigmoid(logits)
    t = ops.cast(target, ms.float32)
    a = (p * t).sum(axis=(-2, -1))
    b = (p * p).sum(axis=(-2, -1)) + 0.001
    c = (t * t).sum(axis=(-2, -1)) + 0.001
    loss = 1.0 - 2.0 * a / (b + c)
    if valid is not None:
        loss = loss * valid
    return loss


def sigmoid_focal_loss(logits, labels, gamma=2.0, alpha=0.25):
    """Sum of the official sigmoid focal loss (mmdet 1.x CUDA forward), no normalisation.

    Class column d (0..C-1) is positive iff ``label == d + 1``, negative iff ``label >= 0`` and not positive
    (label 0 = background; a negative label contributes nothing). Per element, with ``p = sigmoid(x)``:
    pos ``-alpha (1-p)^gamma log p``, neg ``-(1-alpha) p^gamma log(1-p)``; the logs are computed as stable
    log-sigmoids (the CUDA kernel clamps ``log p`` at FLT_MIN instead, which only matters for x < -87).

    Args:
        logits: float32 (M, C).
        labels: int32 (M,), 0..C (or < 0 to ignore a row).
    Returns:
        float32 scalar.
    """
    num_classes = logits.shape[-1]
    classes = ops.arange(1, num_classes + 1, dtype=labels.dtype)
    lab = labels.reshape(-1, 1)
    pos = ops.cast(lab == classes.reshape(1, -1), ms.float32)
    neg = ops.cast(lab >= 0, ms.float32) - pos
    p = ops.sigmoid(logits)
    log_p = _log_sigmoid(logits)
    log_1mp = _log_sigmoid(-logits)
    loss_pos = -alpha * ops.pow(1.0 - p, gamma) * log_p
    loss_neg = -(1.0 - alpha) * ops.pow(p, gamma) * log_1mp
    return (pos * loss_pos + neg * loss_neg).sum()


def gather_kernels(kernels, pos_cell):
    """Per-image gather of dynamic kernels: kernels float32 (N, num_cells, E), pos_cell int32 (N, P) -> (N, P, E).

    Done as one flat gather (row ``n*num_cells + cell``), which has a static shape and a plain scatter-add
    gradient in both execution modes.
    """
    n, num_cells, e = kernels.shape
    p = pos_cell.shape[1]
    offsets = (ops.arange(n, dtype=ms.int32) * num_cells).reshape(n, 1)
    flat_idx = (ops.cast(pos_cell, ms.int32) + offsets).reshape(-1)
    return ops.gather(kernels.reshape(n * num_cells, e), flat_idx, 0).reshape(n, p, e)


def solov2_loss(cate_logits, kernels, mask_feat, cate_target, pos_cell, pos_mask, pos_valid, num_ins,
                ins_weight=3.0, cate_weight=1.0, gamma=2.0, alpha=0.25):
    """SOLOv2 training loss for a batch (official semantics, static shapes).

    Args:
        cate_logits: float32 (N, num_cells, C) raw category logits, levels concatenated, row-major cells
            (the head's ``(N, C, S, S)`` outputs permuted to (N, S, S, C), reshaped and concatenated).
        kernels: float32 (N, num_cells, E) dynamic kernels in the same cell order.
        mask_feat: float32 (N, E, h4, w4) mask features.
        cate_target: int32 (N, num_cells) 0 = background, else 1..C.
        pos_cell: int32 (N, P) positive cell index per target row (0 for padding).
        pos_mask: (N, P, h4, w4) {0,1} mask target per row, any numeric dtype.
        pos_valid: float32 (N, P) 1 for real rows, 0 for padding.
        num_ins: float32 scalar, unique positive cells in the batch (official ``ins_ind_label`` sum).
    Returns:
        (loss_ins, loss_cate), float32 scalars:
        ``loss_ins = ins_weight * Σ(dice·valid) / max(Σ valid, 1)`` (= official mean over the positives,
        duplicated cells counted per row) and ``loss_cate = cate_weight * focal_sum / (num_ins + 1)``.
    """
    n, e, h4, w4 = mask_feat.shape
    p = pos_cell.shape[1]
    k = gather_kernels(kernels, pos_cell)                                  # (N, P, E)
    # 1x1 dynamic conv == batched matmul over the channel axis; P is static, so this compiles in graph mode
    mask_logits = ops.bmm(k, mask_feat.reshape(n, e, h4 * w4)).reshape(n, p, h4, w4)
    dice = dice_loss(mask_logits, pos_mask, pos_valid)                    # (N, P)
    denom = ops.maximum(pos_valid.sum(), 1.0)
    loss_ins = ins_weight * dice.sum() / denom
    c = cate_logits.shape[-1]
    focal = sigmoid_focal_loss(cate_logits.reshape(-1, c), ops.cast(cate_target, ms.int32).reshape(-1),
                               gamma, alpha)
    loss_cate = cate_weight * focal / (ops.cast(num_ins, ms.float32) + 1.0)
    return loss_ins, loss_cate
