"""ResNet-18/34/50/101 and ResNeXt-101 backbones (torchvision layout, mmdetection 'pytorch' style), with
optional deformable conv2 in chosen stages.

Parameter names equal the official checkpoint keys under ``backbone.`` (``conv1.weight``,
``layer3.5.bn2.gamma``, ``layer2.0.downsample.0.weight``, ``layer3.0.conv2.conv_offset.weight`` ...), with
MindSpore's BatchNorm names gamma/beta/moving_mean/moving_variance for torch's weight/bias/running_mean/running_var.
ResNeXt (mmdet 1.x `ResNeXt`, e.g. groups=64, base_width=4 for `open-mmlab://resnext101_64x4d`): the Bottleneck's
inner width is floor(planes * base_width / 64) * groups and conv2 is grouped; everything else is ResNet.
"""
import math
from typing import List, Optional, Sequence, Tuple

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import HeNormal

from solov2.models.dcn import DeformConv2d

ARCH = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
        50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


def conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, dcn: Optional[str] = None,
         dcn_impl: str = "auto") -> nn.Cell:
    """Bias-free conv with torch's explicit zero padding (MindSpore's default pad_mode='same' differs);
    dcn='DCN'/'DCNv2' makes it deformable (mmdet fallback_on_stride=False: strided convs too)."""
    init = HeNormal(mode="fan_out", nonlinearity="relu")
    if dcn is not None:
        return DeformConv2d(cin, cout, k, kind=dcn, stride=stride, padding=k // 2, groups=groups, weight_init=init,
                            impl=dcn_impl)
    return nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad", padding=k // 2, has_bias=False, group=groups,
                     weight_init=init)


def bn(c: int, frozen_stats: bool, zero_gamma: bool = False) -> nn.BatchNorm2d:
    """BatchNorm2d, eps 1e-5, torch momentum 0.1 (= MindSpore momentum 0.9).

    frozen_stats: always normalise with the moving statistics and never update them (mmdet norm_eval=True),
    also in training mode.
    """
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.9, gamma_init="zeros" if zero_gamma else "ones",
                          use_batch_statistics=False if frozen_stats else None)


class BasicBlock(nn.Cell):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample, frozen_stats: bool, *, groups: int,
                 base_width: int, dcn: Optional[str], dcn_impl: str):
        super().__init__()
        if groups != 1 or dcn is not None:   # mmdet asserts the same: BasicBlock has no ResNeXt or DCN variant
            raise ValueError("BasicBlock (ResNet-18/34) supports neither groups > 1 nor DCN")
        self.conv1 = conv(cin, planes, 3, stride)
        self.bn1 = bn(planes, frozen_stats)
        self.conv2 = conv(planes, planes, 3)
        self.bn2 = bn(planes, frozen_stats, zero_gamma=True)   # zero_init_residual
        self.relu = nn.ReLU()
        self.downsample = downsample

    def construct(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Cell):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample, frozen_stats: bool, *, groups: int,
                 base_width: int, dcn: Optional[str], dcn_impl: str):
        super().__init__()
        width = planes if groups == 1 else math.floor(planes * base_width / 64) * groups   # mmdet ResNeXt
        # style='pytorch': the stride sits on the 3x3 conv, not on the first 1x1.
        self.conv1 = conv(cin, width, 1)
        self.bn1 = bn(width, frozen_stats)
        self.conv2 = conv(width, width, 3, stride, groups=groups, dcn=dcn, dcn_impl=dcn_impl)
        self.bn2 = bn(width, frozen_stats)
        self.conv3 = conv(width, planes * 4, 1)
        self.bn3 = bn(planes * 4, frozen_stats, zero_gamma=True)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def construct(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class StemMaxPool(nn.Cell):
    """The official stem MaxPool2d(3, stride 2, padding 1) on x >= 0 (it follows a ReLU): zero padding, then an
    unpadded pool, for export (`ResNet(zero_pad_pool=True)`). Equal to the padded pool in value, and in gradient (a
    window whose maximum is a padding zero has only zeros of the ReLU, whose gradient is 0). MindSpore runs the
    padded pool as MaxPool3DWithArgmax, which the ONNX exporter refuses and which makes a MindIR exported with
    unknown H and W fail to load ("primitive raise" in its shape inference).
    x (N, C, H, W) >= 0 -> (N, C, floor((H - 1) / 2) + 1, floor((W - 1) / 2) + 1)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")

    def construct(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        x = ops.concat((ops.zeros((n, c, 1, w), x.dtype), x, ops.zeros((n, c, 1, w), x.dtype)), axis=2)
        x = ops.concat((ops.zeros((n, c, h + 2, 1), x.dtype), x, ops.zeros((n, c, h + 2, 1), x.dtype)), axis=3)
        return self.pool(x)


class ResNet(nn.Cell):
    """ResNet/ResNeXt trunk without the classifier. x (N, 3, H, W) float32 -> (C2, C3, C4, C5) at strides 4..32.

    Channels of C2..C5: 64/128/256/512 (depth 18, 34) or 256/512/1024/2048 (50, 101). groups > 1: ResNeXt.
    dcn ('DCN', 'DCNv2' or None) replaces conv2 of every block of the stages where stage_with_dcn is True.
    zero_pad_pool: the stem pool as `StemMaxPool` (the exported graphs), else MindSpore's padded MaxPool2d.
    """

    def __init__(self, *, depth: int, frozen_stages: int, norm_eval: bool, groups: int, base_width: int,
                 dcn: Optional[str], stage_with_dcn: Sequence[bool], dcn_impl: str, zero_pad_pool: bool = False):
        super().__init__()
        if depth not in ARCH:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCH)}, got {depth}")
        kind, blocks = ARCH[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        if len(stage_with_dcn) != 4:
            raise ValueError(f"stage_with_dcn needs 4 entries, got {tuple(stage_with_dcn)}")
        self.depth, self.frozen_stages = depth, frozen_stages
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, pad_mode="pad", padding=3, has_bias=False,
                               weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))
        # A frozen stage's BN statistics stay frozen whatever norm_eval says (official `_freeze_stages` puts the stem
        # and layer1..k in eval mode on every train() call).
        self.bn1 = bn(64, norm_eval or frozen_stages >= 0)
        self.relu = nn.ReLU()
        # The padded pool is the faster one here (67 vs 94 ms per light-R18 forward); StemMaxPool is for export.
        self.maxpool = StemMaxPool() if zero_pad_pool else nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad",
                                                                        padding=1)
        cin = 64
        for i, n in enumerate(blocks):
            planes, stride = 64 * 2 ** i, 1 if i == 0 else 2
            frozen_stats = norm_eval or i + 1 <= frozen_stages
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = nn.SequentialCell([conv(cin, planes * block.expansion, 1, stride),
                                                bn(planes * block.expansion, frozen_stats)])
            opts = dict(groups=groups, base_width=base_width, dcn=dcn if stage_with_dcn[i] else None,
                        dcn_impl=dcn_impl)
            layer = [block(cin, planes, stride, downsample, frozen_stats, **opts)]
            cin = planes * block.expansion
            layer += [block(cin, planes, 1, None, frozen_stats, **opts) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.SequentialCell(layer))
        self.out_channels: List[int] = [64 * 2 ** i * block.expansion for i in range(4)]
        self._freeze()

    def _freeze(self) -> None:
        """frozen_stages=k: stem and layer1..k get no gradient (their BN statistics are frozen in __init__)."""
        cells = [self.conv1, self.bn1] if self.frozen_stages >= 0 else []
        cells += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        for cell in cells:
            for p in cell.get_parameters():
                p.requires_grad = False

    def construct(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5
