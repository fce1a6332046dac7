"""The official optimizer recipe: SGD with momentum over every trainable parameter, mmcv's 'step' LR policy."""
from typing import List

import mindspore.nn as nn

from solov2.config import OptimConfig


def lr_schedule(o: OptimConfig, iters_per_epoch: int, total_epochs: int) -> List[float]:
    """Learning rate of every global iteration (mmcv 'step' policy with linear warmup).

    lr(epoch) = lr * gamma ** (number of steps <= epoch) (0-based epochs); during the first warmup_iters global
    iterations it is multiplied by ``1 - (1 - it / warmup_iters) * (1 - warmup_ratio)``.
    """
    out = []
    for it in range(iters_per_epoch * total_epochs):
        epoch = it // iters_per_epoch
        lr = o.lr * o.lr_gamma ** sum(epoch >= s for s in o.lr_steps)
        if o.warmup == "linear" and it < o.warmup_iters:
            lr *= 1 - (1 - it / o.warmup_iters) * (1 - o.warmup_ratio)
        out.append(lr)
    return out


def make_optimizer(net, o: OptimConfig, iters_per_epoch: int, total_epochs: int) -> nn.SGD:
    """SGD with momentum over the trainable parameters and the per-iteration learning-rate table.

    One parameter group, so weight decay applies to every trainable parameter as in the official recipe:
    MindSpore's default filter would silently skip every parameter named gamma/beta (BN and GN affine).
    """
    group = [{"params": net.trainable_params(), "weight_decay": o.weight_decay}]
    return nn.SGD(group, learning_rate=lr_schedule(o, iters_per_epoch, total_epochs), momentum=o.momentum)
