"""The official optimizer recipe: SGD with momentum over every trainable parameter, mmcv's 'step' LR policy."""
import os
from typing import List

import mindspore.nn as nn

from solov2.config import OptimConfig
from solov2.errors import SolovError

MAX_STEPS = 2 ** 31 - 1      # the optimizer's global_step is an int32
BYTES_PER_STEP = 40          # the learning-rate table: a Python float and its list slot (32 B) + a float32 (4 B)


def check_schedule(total_epochs: int, iters_per_epoch: int) -> None:
    """SolovError naming total_epochs unless the run's per-step learning-rate table can exist: at most 2**31-1
    steps (int32) in at most a quarter of this machine's memory. Checked before the table is built (a huge
    total_epochs would otherwise grow memory for minutes, then fail with a MemoryError naming nothing)."""
    steps = total_epochs * iters_per_epoch
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if steps > MAX_STEPS or steps * BYTES_PER_STEP > ram // 4:
        raise SolovError(f"total_epochs={total_epochs}: {steps:,} iterations ({iters_per_epoch} per epoch) need a "
                         f"learning-rate table of {steps * BYTES_PER_STEP / 2 ** 30:.1f} GiB"
                         + (" and exceed the int32 step counter (2**31-1)" if steps > MAX_STEPS else
                            f", more than a quarter of this machine's {ram / 2 ** 30:.0f} GiB"))


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
