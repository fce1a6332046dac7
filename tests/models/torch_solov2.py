"""An independent, compact PyTorch SOLOv2 (inference path only), written from shared/docs/solov2_reference.md.

Module and parameter names equal the official WXinlong/SOLO state dict (torchvision ResNet names, FPN
``.conv.`` wrappers, ``cate_convs/kernel_convs/solo_cate/solo_kernel``, ``convs_all_levels.L.convJ.{conv,gn}``,
``conv_pred.0.{conv,gn}``), so ``SOLOv2(...).load_state_dict(official_state_dict, strict=True)`` works,
``num_batches_tracked`` included. Used by tests/models/test_parity_torch.py as the reference for the MindSpore port.

Deformable convolutions (torch_dcn.DeformConvPack), ResNeXt and the light head's DCN placement follow §1, §3 and §9.
`align_corners` (default False, the official behaviour) and `swap_xy` (read DCN offsets as (dx, dy)) exist only so
tests can show that a wrong variant is detected.
"""
import math
from collections.abc import Sequence
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch_dcn import DeformConvPack

RESNET = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


# ----------------------------------------------------------------------------------------------- backbone
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)      # BasicBlock strides on conv1
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + idt)


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, dcn: Optional[str] = None, swap_xy=False):
    """A bias-free 3x3 conv, pad 1; dcn 'DCN' / 'DCNv2' makes it mmcv's DeformConvPack / ModulatedDeformConvPack."""
    if dcn is None:
        return nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)
    return DeformConvPack(cin, cout, 3, stride, 1, groups, modulated=dcn == "DCNv2", swap_xy=swap_xy)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample, groups: int = 1, base_width: int = 4,
                 dcn: Optional[str] = None, swap_xy: bool = False):
        super().__init__()
        width = planes if groups == 1 else math.floor(planes * base_width / 64) * groups   # ResNeXt
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups, dcn, swap_xy)   # style='pytorch': stride on 3x3
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + idt)


class ResNet(nn.Module):
    """x (N, 3, H, W) -> (C2, C3, C4, C5), strides 4..32; BN eps 1e-5 (use in eval mode)."""

    def __init__(self, depth: int, groups: int = 1, base_width: int = 4, dcn: Optional[str] = None,
                 stage_with_dcn=(False, False, False, False), swap_xy: bool = False):
        super().__init__()
        kind, blocks = RESNET[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, n in enumerate(blocks):
            planes, stride = 64 << i, (1 if i == 0 else 2)
            cout = planes * block.expansion
            down = None
            if stride != 1 or cin != cout:
                down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            opt = {} if kind == "basic" else dict(groups=groups, base_width=base_width,
                                                  dcn=dcn if stage_with_dcn[i] else None, swap_xy=swap_xy)
            layers = [block(cin, planes, stride, down, **opt)] + [block(cout, planes, 1, None, **opt)
                                                                  for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            cin = cout

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


# ----------------------------------------------------------------------------------------------- neck
class Wrap(nn.Module):
    """ConvModule(norm_cfg=None, activation=None): a biased conv stored under ``.conv``."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=True)

    def forward(self, x):
        return self.conv(x)


class FPN(nn.Module):
    """(C2..C5) -> (P2..P6), 256 ch; top-down nearest x2; P6 = max_pool2d(P5, 1, stride=2)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        self.lateral_convs = nn.ModuleList(Wrap(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(Wrap(out_channels, out_channels, 3) for _ in in_channels)

    def forward(self, feats):
        lat = [m(f) for m, f in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2, mode="nearest")
        outs = [m(x) for m, x in zip(self.fpn_convs, lat)]
        return outs + [F.max_pool2d(outs[-1], 1, stride=2)]


# ----------------------------------------------------------------------------------------------- heads
class ConvGN(nn.Module):
    """ConvModule(norm_cfg=GN(32)): conv (no bias) -> ``gn`` GroupNorm(32, eps 1e-5) -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 3, dcn: Optional[str] = None, swap_xy: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False) if dcn is None else \
            DeformConvPack(cin, cout, k, 1, k // 2, modulated=dcn == "DCNv2", swap_xy=swap_xy)
        self.gn = nn.GroupNorm(32, cout)

    def forward(self, x):
        return F.relu(self.gn(self.conv(x)))


def coord(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 2, H, W): channel 0 = linspace(-1, 1, W) along width, channel 1 = y."""
    n, _, h, w = x.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([xx, yy])[None].expand(n, -1, -1, -1).to(x.dtype)


def points_nms(heat: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) -> same; a cell survives iff >= its top, left, top-left neighbours (ties survive)."""
    hmax = F.max_pool2d(heat, 2, stride=1, padding=1)[:, :, :-1, :-1]
    return heat * (hmax == heat).float()


class SOLOv2Head(nn.Module):
    """Shared grid head. forward(P2..P6) -> per level (cate logits (N, C, S, S), kernels (N, E, S, S))."""

    def __init__(self, num_cate: int, in_ch: int = 256, stacked: int = 4, feat_ch: int = 512, e: int = 256,
                 grids=(40, 36, 24, 16, 12), align_corners: bool = False, dcn: Optional[str] = None,
                 dcn_last_only: bool = False, swap_xy: bool = False):
        super().__init__()
        self.grids, self.ac = tuple(grids), align_corners
        d = [dcn if not dcn_last_only or i == stacked - 1 else None for i in range(stacked)]   # Light head: last
        self.cate_convs = nn.ModuleList(ConvGN(in_ch if i == 0 else feat_ch, feat_ch, 3, d[i], swap_xy)
                                        for i in range(stacked))
        self.kernel_convs = nn.ModuleList(ConvGN(in_ch + 2 if i == 0 else feat_ch, feat_ch, 3, d[i], swap_xy)
                                          for i in range(stacked))
        self.solo_cate = nn.Conv2d(feat_ch, num_cate, 3, padding=1)
        self.solo_kernel = nn.Conv2d(feat_ch, e, 3, padding=1)

    def split_feats(self, p):
        """P2 bilinear x0.5, P3, P4, P5, P6 bilinear to P5's size -> strides 8, 8, 16, 32, 32."""
        return [F.interpolate(p[0], scale_factor=0.5, mode="bilinear", align_corners=self.ac), p[1], p[2], p[3],
                F.interpolate(p[4], size=p[3].shape[-2:], mode="bilinear", align_corners=self.ac)]

    def forward(self, p) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        cates, kernels = [], []
        for x, s in zip(self.split_feats(p), self.grids):
            k = F.interpolate(torch.cat([x, coord(x)], 1), size=s, mode="bilinear", align_corners=self.ac)
            c = k[:, :-2]
            for m in self.kernel_convs:
                k = m(k)
            for m in self.cate_convs:
                c = m(c)
            cates.append(self.solo_cate(c))
            kernels.append(self.solo_kernel(k))
        return cates, kernels


class MaskFeatHead(nn.Module):
    """(P2..P5) -> mask features (N, E, H/4, W/4) >= 0. Level L: L x (ConvGN, bilinear x2); coord on P5."""

    def __init__(self, in_ch: int = 256, mid: int = 128, e: int = 256, align_corners: bool = False,
                 dcn: Optional[str] = None, swap_xy: bool = False):
        super().__init__()
        levels = []
        for lvl in range(4):
            seq = nn.Sequential()
            for j in range(max(lvl, 1)):
                cin = (in_ch + (2 if lvl == 3 else 0)) if j == 0 else mid
                seq.add_module(f"conv{j}", ConvGN(cin, mid, 3, dcn, swap_xy))
                if lvl > 0:
                    seq.add_module(f"upsample{j}", nn.Upsample(scale_factor=2, mode="bilinear",
                                                               align_corners=align_corners))
            levels.append(seq)
        self.convs_all_levels = nn.ModuleList(levels)
        self.conv_pred = nn.Sequential(ConvGN(mid, e, 1, dcn, swap_xy))

    def forward(self, p):
        f = self.convs_all_levels[0](p[0])
        for i in range(1, 4):
            x = torch.cat([p[i], coord(p[i])], 1) if i == 3 else p[i]
            f = f + self.convs_all_levels[i](x)
        return self.conv_pred(f)


class SOLOv2(nn.Module):
    """backbone / neck / mask_feat_head / bbox_head, official key names. Call .eval() before use.

    forward(img (N, 3, H, W), H, W multiples of 32) -> dict:
      'neck': [P2..P6]; 'cate_logits', 'kernels': per level (N, C, S, S) / (N, E, S, S);
      'cate_scores': per level (N, S, S, C) = points_nms(sigmoid(logits)) permuted; 'mask_feat' (N, E, H/4, W/4).
    """

    def __init__(self, depth: int = 101, num_cate: int = 80, stacked: int = 4, feat_ch: int = 512, e: int = 256,
                 grids=(40, 36, 24, 16, 12), align_corners: bool = False, groups: int = 1, base_width: int = 4,
                 backbone_dcn: Optional[str] = None, stage_with_dcn=(False, False, False, False),
                 head_dcn: Optional[str] = None, head_dcn_last_only: bool = False, mask_dcn: Optional[str] = None,
                 swap_xy: bool = False):
        super().__init__()
        c = 64 if depth < 50 else 256
        self.backbone = ResNet(depth, groups, base_width, backbone_dcn, stage_with_dcn, swap_xy)
        self.neck = FPN([c, 2 * c, 4 * c, 8 * c])
        self.mask_feat_head = MaskFeatHead(256, 128, e, align_corners, mask_dcn, swap_xy)
        self.bbox_head = SOLOv2Head(num_cate, 256, stacked, feat_ch, e, grids, align_corners, head_dcn,
                                    head_dcn_last_only, swap_xy)

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> Dict[str, list]:
        p = self.neck(self.backbone(img))
        cates, kernels = self.bbox_head(p)
        return dict(neck=p, cate_logits=cates, kernels=kernels, mask_feat=self.mask_feat_head(p[:4]),
                    cate_scores=[points_nms(c.sigmoid()).permute(0, 2, 3, 1) for c in cates])


# ----------------------------------------------------------------------------------------------- inference
def matrix_nms(masks, labels, scores, kernel="gaussian", sigma=2.0, sum_masks=None):
    """masks bool (n, h, w), labels (n,), scores (n,) sorted descending -> decayed scores (n,)."""
    n = len(labels)
    if n == 0:
        return scores
    m = masks.reshape(n, -1).float()
    sum_masks = m.sum(1) if sum_masks is None else sum_masks
    inter = m @ m.T
    s = sum_masks.expand(n, n)
    iou = (inter / (s + s.T - inter)).triu(1)
    lab = labels.expand(n, n)
    d = iou * (lab == lab.T).float().triu(1)               # decay IoU, same class, i < j
    comp = d.max(0).values.expand(n, n).T                  # C[i, j] = max IoU of mask i with its betters
    if kernel == "gaussian":
        decay = torch.exp(-sigma * d ** 2) / torch.exp(-sigma * comp ** 2)
    else:
        decay = (1 - d) / (1 - comp)
    return scores * decay.min(0).values


@torch.no_grad()
def get_seg_single(cate: torch.Tensor, kernels: torch.Tensor, mask_feat: torch.Tensor, img_shape, ori_shape,
                   cfg, grids=(40, 36, 24, 16, 12), strides=(8, 8, 16, 32, 32), align_corners: bool = False,
                   near_decided_by=None):
    """Official post-processing of one image.

    cate (cells, C) scores after sigmoid + points_nms; kernels (cells, E); mask_feat (E, h, w).
    cfg: object with score_thr, mask_thr, nms_pre, update_thr, kernel, sigma, max_per_img.
    near_decided_by: optional (kernels (cells, E), mask_feat (E, h, w), near) of another network (ours): the
        1/4-resolution mask pixels whose probability here is within `near` of mask_thr are binarised as that
        network binarises them. Those binary masks feed the stride check, the maskness and Matrix NMS, so the
        result is what this code gives when float32 noise decides the near-threshold pixels the other way.
    Returns dict(masks bool (n, H0, W0), soft (n, H0, W0) the probabilities they threshold, labels int64 (n,), scores float32 (n,), cells int64 (n,), counts).
    """
    h, w = int(img_shape[0]), int(img_shape[1])
    fh, fw = mask_feat.shape[-2:]
    empty = dict(masks=torch.zeros(0, int(ori_shape[0]), int(ori_shape[1]), dtype=torch.bool),
                 labels=torch.zeros(0, dtype=torch.int64), scores=torch.zeros(0), cells=torch.zeros(0, dtype=torch.int64))
    counts = {}
    inds = (cate > cfg.score_thr).nonzero()
    cells, labels = inds[:, 0], inds[:, 1]
    scores = cate[cells, labels]
    counts["candidates"] = len(cells)
    if len(cells) == 0:
        return dict(empty, counts=counts)
    cell_stride = torch.cat([torch.full((s * s,), float(st)) for s, st in zip(grids, strides)])[cells]
    k = kernels[cells]
    seg = F.conv2d(mask_feat[None], k.view(len(k), -1, 1, 1)).squeeze(0).sigmoid()   # (K, h, w)
    masks = seg > cfg.mask_thr
    if near_decided_by is not None:
        o_kern, o_feat, near = near_decided_by
        other = F.conv2d(o_feat[None], o_kern[cells].view(len(k), -1, 1, 1)).squeeze(0).sigmoid()
        masks = torch.where((seg - cfg.mask_thr).abs() <= near, other > cfg.mask_thr, masks)
    sums = masks.sum((1, 2)).float()
    keep = sums > cell_stride
    counts["after_stride"] = int(keep.sum())
    if not keep.any():
        return dict(empty, counts=counts)
    seg, masks, sums, scores, labels, cells = seg[keep], masks[keep], sums[keep], scores[keep], labels[keep], cells[keep]
    scores = scores * ((seg * masks.float()).sum((1, 2)) / sums)                       # maskness
    order = torch.argsort(scores, descending=True, stable=True)[:cfg.nms_pre]
    seg, masks, sums, scores, labels, cells = seg[order], masks[order], sums[order], scores[order], labels[order], cells[order]
    scores = matrix_nms(masks, labels, scores, cfg.kernel, cfg.sigma, sums)
    keep = scores >= cfg.update_thr
    counts["after_update_thr"] = int(keep.sum())
    if not keep.any():
        return dict(empty, counts=counts)
    seg, scores, labels, cells = seg[keep], scores[keep], labels[keep], cells[keep]
    order = torch.argsort(scores, descending=True, stable=True)[:cfg.max_per_img]
    seg, scores, labels, cells = seg[order], scores[order], labels[order], cells[order]
    seg = F.interpolate(seg[None], size=(4 * fh, 4 * fw), mode="bilinear", align_corners=align_corners)[:, :, :h, :w]
    soft = F.interpolate(seg, size=(int(ori_shape[0]), int(ori_shape[1])), mode="bilinear",
                         align_corners=align_corners)[0]
    return dict(masks=soft > cfg.mask_thr, soft=soft, labels=labels, scores=scores, cells=cells, counts=counts)


def flatten_outputs(out: Dict[str, list], i: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image i of SOLOv2.forward -> (cate (cells, C), kernels (cells, E), mask_feat (E, h, w)), levels in order."""
    cate = torch.cat([c[i].reshape(-1, c.shape[-1]) for c in out["cate_scores"]])
    kern = torch.cat([k[i].permute(1, 2, 0).reshape(-1, k.shape[1]) for k in out["kernels"]])
    return cate, kern, out["mask_feat"][i]
