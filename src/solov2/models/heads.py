"""SOLOv2 heads: the grid head (category + dynamic-kernel branches) and the unified mask-feature head.

Parameter names follow the official checkpoint (``cate_convs.{i}.conv.weight``, ``cate_convs.{i}.gn.gamma``,
``solo_cate.weight``, ``convs_all_levels.{L}.conv{j}.conv.weight``, ``conv_pred.0.gn.beta`` ...).
"""
import math
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import Constant, HeNormal, Normal

from solov2.models.dcn import DeformConv2d
from solov2.models.portable import GroupNormPortable, coord_features_portable, resize_bilinear_portable
from solov2.models.resize import resize_bilinear


def _linspace(n, dtype) -> Tensor:
    """(n,) points from -1 to 1 in dtype. float32: LinSpace (as before, to the bit). Under mixed precision x is
    float16, and PYNATIVE casts every float input of an op to the cell's dtype, which LinSpace refuses."""
    if dtype == ms.float32:
        return ops.linspace(-1.0, 1.0, n)
    step = 2.0 / (n - 1) if n > 1 else 0.0
    return ops.arange(n, dtype=ms.int32).astype(dtype) * step - 1.0


def coord_features(x: Tensor) -> Tensor:
    """CoordConv channels for x (N, C, H, W): (N, 2, H, W) in x's dtype, channel 0 = x in [-1, 1] along the width,
    channel 1 = y along the height (official order [x, y], linspace endpoints included)."""
    n, _, h, w = x.shape
    xs = _linspace(w, x.dtype)
    ys = _linspace(h, x.dtype)
    xx = ops.broadcast_to(xs.reshape(1, 1, 1, w), (n, 1, h, w))
    yy = ops.broadcast_to(ys.reshape(1, 1, h, 1), (n, 1, h, w))
    return ops.concat((xx, yy), axis=1)


def points_nms(heat: Tensor) -> Tensor:
    """Keep a score only if it is >= its top, left and top-left neighbours (same class); others -> 0.

    heat (N, C, S, S) float32 in [0, 1] -> same shape. Official: max_pool 2x2, stride 1, pad 1, crop [:-1, :-1].
    """
    hmax = ops.max_pool2d(heat, kernel_size=2, stride=1, padding=1)[:, :, :-1, :-1]
    return heat * (hmax == heat).astype(heat.dtype)


class ConvGNReLU(nn.Cell):
    """Official ConvModule(conv_cfg, norm_cfg=GN(32)): conv (no bias) -> GroupNorm(32) -> ReLU.

    dcn='DCN'/'DCNv2' (conv_cfg=dict(type=...)): the conv is deformable. Initialisation as the official heads
    (for training from scratch): SOLOv2Head normal(0.01) on the conv weight, conv_offset zero (mmcv); the official
    MaskFeatHead normal(0.01)-initialises every nn.Conv2d inside (so conv_offset, `offset_std`) while the deformable
    weight keeps ConvModule's kaiming init (`kaiming=True`). portable: `GroupNormPortable` (same names; export only).
    """

    def __init__(self, cin: int, cout: int, k: int = 3, std: float = 0.01, *, dcn: Optional[str] = None,
                 offset_std: float = 0.0, kaiming: bool = False, dcn_impl: str, portable: bool):
        super().__init__()
        if dcn is None:
            self.conv = nn.Conv2d(cin, cout, k, pad_mode="pad", padding=k // 2, has_bias=False,
                                  weight_init=Normal(sigma=std))
        else:
            init = HeNormal(mode="fan_out", nonlinearity="relu") if kaiming else Normal(sigma=std)
            self.conv = DeformConv2d(cin, cout, k, kind=dcn, stride=1, padding=k // 2, weight_init=init,
                                     offset_init=Normal(sigma=offset_std) if offset_std else "zeros", impl=dcn_impl)
        self.gn = GroupNormPortable(32, cout, eps=1e-5) if portable else nn.GroupNorm(32, cout, eps=1e-5)
        self.relu = nn.ReLU()

    def construct(self, x: Tensor) -> Tensor:
        return self.relu(self.gn(self.conv(x)))


class SOLOv2Head(nn.Cell):
    """Grid head shared by the 5 levels.

    Input: (P2..P6) (N, in_channels, H_l, W_l). Output: per level l with grid S_l,
    cate logits (N, C, S_l, S_l) and kernels (N, E, S_l, S_l); C = num_classes - 1, E = ins_out_channels.
    portable: the ONNX-exportable resize, coordinates and GroupNorm (`solov2.models.portable`; export only).
    """

    def __init__(self, *, num_classes: int, in_channels: int, stacked_convs: int, seg_feat_channels: int,
                 ins_out_channels: int, num_grids: Sequence[int], dcn: Optional[str], dcn_all_convs: bool,
                 dcn_impl: str, portable: bool):
        super().__init__()
        self.num_grids = tuple(num_grids)
        self.cate_out_channels = num_classes - 1
        c = seg_feat_channels
        # use_dcn_in_tower: every tower conv of both branches (SOLOv2Head) or only the last one (SOLOv2LightHead).
        tower_dcn = [dcn if dcn_all_convs or i == stacked_convs - 1 else None for i in range(stacked_convs)]
        # Registration order matters for nothing but readability; names are what the converter relies on.
        self.cate_convs = nn.CellList([ConvGNReLU(in_channels if i == 0 else c, c, dcn=tower_dcn[i], dcn_impl=dcn_impl,
                                                  portable=portable) for i in range(stacked_convs)])
        self.kernel_convs = nn.CellList([ConvGNReLU(in_channels + 2 if i == 0 else c, c, dcn=tower_dcn[i],
                                                    dcn_impl=dcn_impl, portable=portable)
                                         for i in range(stacked_convs)])
        self._resize = resize_bilinear_portable if portable else resize_bilinear
        self._coords = coord_features_portable if portable else coord_features
        prior_bias = -math.log((1 - 0.01) / 0.01)   # bias_init_with_prob(0.01): focal-loss prior
        self.solo_cate = nn.Conv2d(c, self.cate_out_channels, 3, pad_mode="pad", padding=1, has_bias=True,
                                   weight_init=Normal(sigma=0.01), bias_init=Constant(prior_bias))
        self.solo_kernel = nn.Conv2d(c, ins_out_channels, 3, pad_mode="pad", padding=1, has_bias=True,
                                     weight_init=Normal(sigma=0.01), bias_init="zeros")

    def split_feats(self, feats: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        """P2 bilinear x0.5 and P6 bilinear up to P5's size, so the level strides become 8, 8, 16, 32, 32."""
        p2, p3, p4, p5, p6 = feats
        h2, w2 = p2.shape[-2:]
        return (self._resize(p2, (h2 // 2, w2 // 2)), p3, p4, p5, self._resize(p6, p5.shape[-2:]))

    def forward_level(self, x: Tensor, grid: int) -> Tuple[Tensor, Tensor]:
        # The coordinates are appended at the level's own resolution and resized together with the features,
        # so at S x S they are not linspace(-1, 1, S): this is the official behaviour.
        kernel_feat = self._resize(ops.concat((x, self._coords(x)), axis=1), (grid, grid))
        cate_feat = kernel_feat[:, :-2]
        for layer in self.kernel_convs:
            kernel_feat = layer(kernel_feat)
        for layer in self.cate_convs:
            cate_feat = layer(cate_feat)
        return self.solo_cate(cate_feat), self.solo_kernel(kernel_feat)

    def construct(self, feats: Tuple[Tensor, ...]) -> Tuple[List[Tensor], List[Tensor]]:
        levels = self.split_feats(feats)
        cates, kernels = [], []
        for i in range(len(self.num_grids)):
            cate, kernel = self.forward_level(levels[i], self.num_grids[i])
            cates.append(cate)
            kernels.append(kernel)
        return cates, kernels


class Upsample2x(nn.Cell):
    """Bilinear x2 upsampling (align_corners=False); no parameters. portable: `resize_bilinear_portable`."""

    def __init__(self, *, portable: bool):
        super().__init__()
        self._resize = resize_bilinear_portable if portable else resize_bilinear

    def construct(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        return self._resize(x, (h * 2, w * 2))


class MaskFeatHead(nn.Cell):
    """Unified mask features from P2..P5: (N, 256, H/4, W/4) ... -> (N, E, H/4, W/4) float32, >= 0 (GN + ReLU).

    Level L (stride 4 * 2^L) goes through L (conv, upsample x2) pairs (level 0: one conv); level 3 gets the
    coordinate channels before its first conv; the four maps are summed and projected by conv_pred (1x1).
    portable: the ONNX-exportable resize, coordinates and GroupNorm (`solov2.models.portable`; export only).
    """

    def __init__(self, *, in_channels: int, out_channels: int, start_level: int, end_level: int, num_classes: int,
                 dcn: Optional[str], dcn_impl: str, portable: bool):
        super().__init__()
        if (start_level, end_level) != (0, 3):
            raise ValueError("MaskFeatHead: only start_level=0, end_level=3 (P2..P5) is supported")

        def unit(cin, cout, k=3):   # conv_cfg applies to every conv, the 1x1 conv_pred included (R101-DCN)
            return ConvGNReLU(cin, cout, k, dcn=dcn, offset_std=0.01, kaiming=True, dcn_impl=dcn_impl,
                              portable=portable)
        levels = [nn.SequentialCell(OrderedDict([("conv0", unit(in_channels, out_channels))]))]
        for lvl in range(1, 4):
            layers = OrderedDict()
            for j in range(lvl):
                cin = (in_channels + 2 if lvl == 3 else in_channels) if j == 0 else out_channels
                layers[f"conv{j}"] = unit(cin, out_channels)
                layers[f"upsample{j}"] = Upsample2x(portable=portable)
            levels.append(nn.SequentialCell(layers))
        self.convs_all_levels = nn.CellList(levels)
        self.conv_pred = nn.SequentialCell([unit(out_channels, num_classes, k=1)])
        self._coords = coord_features_portable if portable else coord_features

    def construct(self, feats: Tuple[Tensor, ...]) -> Tensor:
        out = self.convs_all_levels[0](feats[0])
        for i in range(1, 4):
            x = feats[i]
            if i == 3:
                x = ops.concat((x, self._coords(x)), axis=1)
            out = out + self.convs_all_levels[i](x)
        return self.conv_pred(out)
