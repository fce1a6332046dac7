"""An independent PyTorch reference of mmcv's deformable convolutions (DCNv1 DeformConvPack, DCNv2
ModulatedDeformConvPack), written from shared/docs/solov2_reference.md §9 with `F.grid_sample`.

torchvision's ops do not load here (its CPU library links CUDA), so each kernel tap is one `grid_sample` with
zeros padding, which is exactly "a bilinear corner outside the map contributes 0". `swap_xy=True` reads the
offsets in the wrong order (channel 2k as dx): tests use it to show that a layout mistake is detected.
"""
import torch
import torch.nn.functional as F
from torch import nn


def deform_conv2d(x, offset, mask, weight, stride=1, padding=0, dilation=1, groups=1, swap_xy=False):
    """x (N, C, H, W), offset (N, 2K, Ho, Wo) [2k = dy, 2k+1 = dx], mask (N, K, Ho, Wo) or None,
    weight (O, C/groups, kh, kw) -> (N, O, Ho, Wo). Computed in x's dtype."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    base_y = (torch.arange(ho, dtype=x.dtype) * stride - padding)[:, None]
    base_x = (torch.arange(wo, dtype=x.dtype) * stride - padding)[None, :]
    cols = []
    for i in range(kh):
        for j in range(kw):
            k = i * kw + j
            dy, dx = offset[:, 2 * k], offset[:, 2 * k + 1]
            if swap_xy:
                dy, dx = dx, dy
            py, px = base_y + i * dilation + dy, base_x + j * dilation + dx          # (N, Ho, Wo) pixels
            # align_corners=False: pixel p <-> normalised (2p + 1) / size - 1
            grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1)
            s = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            cols.append(s if mask is None else s * mask[:, k:k + 1])
    cols = torch.stack(cols, 2).reshape(n, groups, cg, kh * kw, ho, wo)               # (N, g, C/g, K, Ho, Wo)
    wg = weight.reshape(groups, o // groups, cg, kh * kw)
    return torch.einsum("ngckyx,gock->ngoyx", cols, wg).reshape(n, o, ho, wo)


class DeformConvPack(nn.Module):
    """mmcv DeformConvPack ('DCN', modulated=False) / ModulatedDeformConvPack ('DCNv2'), bias-free.

    Keys: ``weight``, ``conv_offset.weight``, ``conv_offset.bias``."""

    def __init__(self, cin, cout, k, stride=1, padding=0, groups=1, modulated=True, swap_xy=False):
        super().__init__()
        self.stride, self.padding, self.groups, self.modulated, self.swap_xy = stride, padding, groups, modulated, swap_xy
        self.weight = nn.Parameter(torch.zeros(cout, cin // groups, k, k))
        self.conv_offset = nn.Conv2d(cin, (3 if modulated else 2) * k * k, k, stride, padding, bias=True)

    def forward(self, x):
        out = self.conv_offset(x)
        if self.modulated:
            o1, o2, m = torch.chunk(out, 3, dim=1)
            offset, mask = torch.cat((o1, o2), 1), torch.sigmoid(m)
        else:
            offset, mask = out, None
        return deform_conv2d(x, offset, mask, self.weight, self.stride, self.padding, 1, self.groups, self.swap_xy)
