"""Feature pyramid (mmdetection FPN, add_extra_convs=False, num_outs=5).

Names: ``lateral_convs.{i}.conv.{weight,bias}`` (1x1) and ``fpn_convs.{i}.conv.{weight,bias}`` (3x3), as the
official ConvModule wrappers without norm and activation.
"""
from typing import Sequence, Tuple

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import XavierUniform

from solov2.models.portable import resize_nearest_portable, subsample2
from solov2.models.resize import resize_nearest


class PlainConv(nn.Cell):
    """A conv with bias held under ``.conv`` so its keys match the official ConvModule(norm_cfg=None)."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, pad_mode="pad", padding=k // 2, has_bias=True,
                              weight_init=XavierUniform(), bias_init="zeros")

    def construct(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Cell):
    """(C2..C5) -> (P2, P3, P4, P5, P6), all `out_channels`; P6 = P5[..., ::2, ::2].

    P6 is the official ``max_pool2d(P5, kernel_size=1, stride=2)``, i.e. a subsample of P5 (size ceil(H5/2)).
    portable: the ONNX-exportable nearest resize and subsample (`solov2.models.portable`; export only).
    """

    def __init__(self, *, in_channels: Sequence[int], out_channels: int, num_outs: int, portable: bool):
        super().__init__()
        if num_outs != len(in_channels) + 1:
            raise ValueError(f"FPN: num_outs={num_outs} unsupported (expected {len(in_channels) + 1})")
        self.lateral_convs = nn.CellList([PlainConv(c, out_channels, 1) for c in in_channels])
        self.fpn_convs = nn.CellList([PlainConv(out_channels, out_channels, 3) for _ in in_channels])
        self.num_ins = len(in_channels)
        self._nearest = resize_nearest_portable if portable else resize_nearest
        self._subsample = subsample2 if portable else _max_pool_subsample

    def construct(self, feats: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        laterals = [self.lateral_convs[i](feats[i]) for i in range(self.num_ins)]
        # Top-down: nearest x2 (sizes are exact multiples because inputs are padded to 32).
        for i in range(self.num_ins - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._nearest(laterals[i], laterals[i - 1].shape[-2:])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(self.num_ins)]
        outs.append(self._subsample(outs[-1]))
        return tuple(outs)


def _max_pool_subsample(x: Tensor) -> Tensor:
    """The official max_pool2d(P5, 1, stride=2) (a subsample). Not P5[..., ::2, ::2]: the backward of that strided
    slice segfaults in PYNATIVE_MODE on MindSpore 2.10 CPU."""
    return ops.max_pool2d(x, kernel_size=1, stride=2)
