"""One training step as a function of tensors: loss, gradients, all-reduce, loss unscaling and the finite check,
clipping, update (jit-compiled in GRAPH mode). Which cells run in float16 is `solov2.engine.amp`."""
from typing import Optional

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from solov2.config import HeadConfig
from solov2.models.losses import solov2_loss


def make_loss_fn(net, head: HeadConfig):
    """batch tensors (see `to_tensors`) -> (loss, loss_ins, loss_cate): the official SOLOv2 objective."""

    def forward(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins):
        # the losses in float32 whatever the network computed in (mixed precision)
        cate, kernels, mask_feat = (ops.cast(t, ms.float32) for t in net(img))
        loss_ins, loss_cate = solov2_loss(cate, kernels, mask_feat, cate_target, pos_cell, pos_mask, pos_valid,
                                          num_ins, ins_weight=head.ins_loss_weight, cate_weight=head.cate_loss_weight,
                                          gamma=head.focal_gamma, alpha=head.focal_alpha)
        return loss_ins + loss_cate, loss_ins, loss_cate
    return forward


def make_train_step(net, optimizer, *, head: HeadConfig, grad_clip: Optional[float], world: int, jit: bool,
                    scaler=None):
    """A function batch tensors -> (loss, loss_ins, loss_cate, finite) that also applies one optimizer update.
    The losses are float32 scalars, averaged over the ranks when world > 1.

    world > 1: gradients are averaged over the devices (losses are normalised per device as in the official
    code, so this equals the official DDP). jit: compile the step as one graph (GRAPH mode).
    scaler: a `mindspore.amp` loss scaler (see `solov2.engine.amp.make_loss_scaler`) or None. With one, the
    scaled loss is differentiated, the all-reduced gradients are unscaled (before clipping) and checked; if any
    is not finite (a float16 overflow) the update is skipped and the scaler adjusts (a dynamic one halves).
    finite: bool scalar tensor, False for a skipped update (always True without a scaler).
    """
    loss_fn = make_loss_fn(net, head)
    # value_and_grad does not all-reduce by itself
    reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=world) if world > 1 else None
    loss_sum = ops.AllReduce() if world > 1 else None

    def over_ranks(loss, loss_ins, loss_cate):
        """The losses averaged over the ranks, as mmdet's parse_losses logs them: every rank sees the same values,
        so a loss that is not finite on one rank stops every rank, not only that one (the others would wait)."""
        if loss_sum is None:
            return loss, loss_ins, loss_cate
        mean = loss_sum(ops.stack([loss, loss_ins, loss_cate])) / world
        return mean[0], mean[1], mean[2]

    if scaler is None:
        grad_fn = ms.value_and_grad(loss_fn, None, optimizer.parameters, has_aux=True)

        def step(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins):
            (loss, loss_ins, loss_cate), grads = grad_fn(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins)
            if reducer is not None:
                grads = reducer(grads)
            if grad_clip:
                grads = ops.clip_by_global_norm(grads, grad_clip)
            loss = ops.depend(loss, optimizer(grads))
            return (*over_ranks(loss, loss_ins, loss_cate), ops.ones((), ms.bool_))
        return ms.jit(step) if jit else step

    def scaled_loss(*batch):
        loss, loss_ins, loss_cate = loss_fn(*batch)
        return scaler.scale(loss), loss, loss_ins, loss_cate

    grad_fn = ms.value_and_grad(scaled_loss, None, optimizer.parameters, has_aux=True)
    one = ms.Tensor([1], ms.int32)
    # Checking the all-reduced gradients is one decision on every rank only where all_finite reads the values (CPU,
    # GPU, Ascend 910B by default); in Ascend's saturation mode it reads each device's own overflow flag.
    flag_sum = ops.AllReduce() if world > 1 else None

    def scaled_step(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins):
        (_, loss, loss_ins, loss_cate), grads = grad_fn(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins)
        if reducer is not None:
            grads = reducer(grads)
        grads = scaler.unscale(grads)
        finite = ms.amp.all_finite(grads)
        if flag_sum is not None:
            finite = flag_sum(ops.logical_not(finite).astype(ms.float32)) == 0
        scaler.adjust(finite)
        if grad_clip:
            grads = ops.clip_by_global_norm(grads, grad_clip)
        if finite:
            loss = ops.depend(loss, optimizer(grads))
        else:
            # skipped, yet the iteration counts (as in mmcv's fp16 hook): the per-step learning rate stays aligned
            loss = ops.depend(loss, ops.assign_add(optimizer.global_step, one))
        return (*over_ranks(loss, loss_ins, loss_cate), finite)
    return ms.jit(scaled_step) if jit else scaled_step


def to_tensors(batch: dict):
    """A collated batch (NumPy, see `solov2.data.train_transforms.collate`) -> the step's six tensors."""
    return (ms.Tensor(batch["img"]), ms.Tensor(batch["cate_target"]), ms.Tensor(batch["pos_cell"]),
            ms.Tensor(batch["pos_mask"]), ms.Tensor(batch["pos_valid"]), ms.Tensor(batch["num_ins"], ms.float32))
