"""The SOLOv2 network: ResNet -> FPN -> (SOLOv2Head, MaskFeatHead), and its inference wrapper."""
from typing import List, Tuple

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from solov2.config import SOLOv2Config
from solov2.models.dcn import DeformConv2d
from solov2.models.fpn import FPN
from solov2.models.heads import MaskFeatHead, SOLOv2Head, points_nms
from solov2.models.portable import points_nms_portable, sigmoid_portable
from solov2.models.resnet import ResNet


def flatten_levels(maps: List[Tensor]) -> Tensor:
    """[(N, K, S_l, S_l)] -> (N, sum_l S_l^2, K): cells level after level, row-major within a level."""
    flat = [ops.transpose(m, (0, 2, 3, 1)).reshape(m.shape[0], -1, m.shape[1]) for m in maps]
    return ops.concat(flat, axis=1)


class SOLOv2(nn.Cell):
    """SOLOv2 with official parameter names (``backbone.*``, ``neck.*``, ``mask_feat_head.*``, ``bbox_head.*``).

    construct(img) is the training forward: img (N, 3, H, W) float32, H and W multiples of 32 ->
      cate_logits (N, cells, C) raw logits, kernels (N, cells, E), mask_feat (N, E, H/4, W/4),
    with cells = sum(S^2) = 3872 for the default grids and C = num_classes - 1.

    dcn_impl: the deformable-convolution implementation, 'gather' | 'native' | 'auto' (see `solov2.models.dcn`).
    portable=True builds the ONNX-exportable formulation (`solov2.models.portable`, deformable convolutions
    'portable'): the same parameters and outputs (1e-5), static shapes, inference only. Used by the export.
    zero_pad_pool=True (implied by portable) builds the ResNet stem pool as `StemMaxPool`, the one change a MindIR
    with unknown H and W needs (the MindIR export).
    """

    def __init__(self, cfg: SOLOv2Config, dcn_impl: str = "auto", portable: bool = False, zero_pad_pool: bool = False):
        super().__init__()
        self.portable = portable
        dcn_impl = "portable" if portable else dcn_impl
        b, n, h, m = cfg.backbone, cfg.neck, cfg.head, cfg.mask_feat
        self.backbone = ResNet(depth=b.depth, frozen_stages=b.frozen_stages, norm_eval=b.norm_eval, groups=b.groups,
                               base_width=b.base_width, dcn=b.dcn, stage_with_dcn=b.stage_with_dcn, dcn_impl=dcn_impl,
                               zero_pad_pool=zero_pad_pool or portable)
        if tuple(self.backbone.out_channels) != tuple(n.in_channels):
            raise ValueError(f"neck.in_channels {tuple(n.in_channels)} do not match ResNet-{b.depth} "
                             f"outputs {tuple(self.backbone.out_channels)}")
        self.neck = FPN(in_channels=n.in_channels, out_channels=n.out_channels, num_outs=n.num_outs, portable=portable)
        self.mask_feat_head = MaskFeatHead(in_channels=m.in_channels, out_channels=m.out_channels,
                                           start_level=m.start_level, end_level=m.end_level, num_classes=m.num_classes,
                                           dcn=m.dcn, dcn_impl=dcn_impl, portable=portable)
        self.bbox_head = SOLOv2Head(num_classes=h.num_classes, in_channels=h.in_channels,
                                    stacked_convs=h.stacked_convs, seg_feat_channels=h.seg_feat_channels,
                                    ins_out_channels=h.ins_out_channels, num_grids=h.num_grids, dcn=h.dcn,
                                    dcn_all_convs=h.dcn_all_convs, dcn_impl=dcn_impl, portable=portable)
        # MindSpore's deformable operator cannot infer shapes with unknown H and W (see solov2.models.dcn)
        self.static_only = portable or any(isinstance(c, DeformConv2d) and c.impl == "native"
                                           for _, c in self.cells_and_names())

    def features(self, img: Tensor) -> Tuple[List[Tensor], List[Tensor], Tensor]:
        """img -> (per-level cate logits (N, C, S, S), per-level kernels (N, E, S, S), mask_feat)."""
        feats = self.neck(self.backbone(img))
        mask_feat = self.mask_feat_head(feats[0:4])
        cates, kernels = self.bbox_head(feats)
        return cates, kernels, mask_feat

    def construct(self, img: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        cates, kernels, mask_feat = self.features(img)
        return flatten_levels(cates), flatten_levels(kernels), mask_feat


class SOLOv2Eval(nn.Cell):
    """Inference forward of a SOLOv2 (shares its parameters; names are not prefixed).

    img (N, 3, H, W) -> cate_scores (N, cells, C) = points_nms(sigmoid(logits)), kernels (N, cells, E),
    mask_feat (N, E, H/4, W/4). The data-dependent rest (thresholds, Matrix NMS) is
    `solov2.models.postprocess.get_seg_single`, outside the graph.

    dynamic_shape=True declares N, H and W unknown, so GRAPH mode compiles one graph for every input size
    (otherwise each new padded size compiles another, 10-18 s and +1.8 GB resident each on CPU). The outputs are
    the same to the bit (measured here); PYNATIVE mode ignores it. A net with native deformable convolutions
    (`SOLOv2.static_only`) keeps static shapes: MindSpore's operator cannot infer unknown H and W; so does a
    portable one (its constants are built from static shapes), which also uses `points_nms_portable` and
    `sigmoid_portable`.
    """

    def __init__(self, net: SOLOv2, dynamic_shape: bool = False):
        super().__init__(auto_prefix=False)
        self.net = net
        self._points_nms = points_nms_portable if net.portable else points_nms
        self._sigmoid = sigmoid_portable if net.portable else ops.sigmoid
        if dynamic_shape and not net.static_only:
            self.set_inputs(Tensor(shape=[None, 3, None, None], dtype=ms.float32))

    def construct(self, img: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        cates, kernels, mask_feat = self.net.features(img)
        scores = [self._points_nms(self._sigmoid(c)) for c in cates]
        return flatten_levels(scores), flatten_levels(kernels), mask_feat


def build_model(cfg: SOLOv2Config, dcn_impl: str = "auto", portable: bool = False,
                zero_pad_pool: bool = False) -> SOLOv2:
    """A SOLOv2 cell from a typed config (see `solov2.config.load_config`); dcn_impl: see `solov2.models.dcn`;
    portable, zero_pad_pool: the exportable formulations (see `SOLOv2`)."""
    return SOLOv2(cfg, dcn_impl=dcn_impl, portable=portable, zero_pad_pool=zero_pad_pool)
