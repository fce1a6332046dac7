"""One training step as a function of tensors: loss, gradients, all-reduce, clipping, update (jit-compiled in
GRAPH mode). Loss scaling and mixed precision belong here."""
from typing import Optional

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from solov2.config import HeadConfig
from solov2.models.losses import solov2_loss


def make_loss_fn(net, head: HeadConfig):
    """batch tensors (see `to_tensors`) -> (loss, loss_ins, loss_cate): the official SOLOv2 objective."""

    def forward(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins):
        cate, kernels, mask_feat = net(img)
        loss_ins, loss_cate = solov2_loss(cate, kernels, mask_feat, cate_target, pos_cell, pos_mask, pos_valid,
                                          num_ins, ins_weight=head.ins_loss_weight, cate_weight=head.cate_loss_weight,
                                          gamma=head.focal_gamma, alpha=head.focal_alpha)
        return loss_ins + loss_cate, loss_ins, loss_cate
    return forward


def make_train_step(net, optimizer, *, head: HeadConfig, grad_clip: Optional[float], world: int, jit: bool):
    """A function batch tensors -> (loss, loss_ins, loss_cate) that also applies one optimizer update.

    world > 1: gradients are averaged over the devices (losses are normalised per device as in the official
    code, so this equals the official DDP). jit: compile the step as one graph (GRAPH mode).
    """
    grad_fn = ms.value_and_grad(make_loss_fn(net, head), None, optimizer.parameters, has_aux=True)
    # value_and_grad does not all-reduce by itself
    reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=world) if world > 1 else None

    def step(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins):
        (loss, loss_ins, loss_cate), grads = grad_fn(img, cate_target, pos_cell, pos_mask, pos_valid, num_ins)
        if reducer is not None:
            grads = reducer(grads)
        if grad_clip:
            grads = ops.clip_by_global_norm(grads, grad_clip)
        loss = ops.depend(loss, optimizer(grads))
        return loss, loss_ins, loss_cate

    return ms.jit(step) if jit else step


def to_tensors(batch: dict):
    """A collated batch (NumPy, see `solov2.data.train_transforms.collate`) -> the step's six tensors."""
    return (ms.Tensor(batch["img"]), ms.Tensor(batch["cate_target"]), ms.Tensor(batch["pos_cell"]),
            ms.Tensor(batch["pos_mask"]), ms.Tensor(batch["pos_valid"]), ms.Tensor(batch["num_ins"], ms.float32))
