"""Deformable convolution with the exact semantics of the official mmdetection-1.x / mmcv operators.

* 'DCN'   = `DeformConvPack`: offsets = conv_offset(x) (2*kh*kw channels), no mask.
* 'DCNv2' = `ModulatedDeformConvPack`: o1, o2, m = chunk(conv_offset(x), 3); offsets = cat(o1, o2);
  mask = sigmoid(m) (kh*kw channels).
Offset layout (mmcv CUDA kernel): for kernel tap k = i*kw + j, channel 2k is dy (rows), 2k+1 is dx (columns);
output pixel (ho, wo) samples x at (ho*stride - pad + i*dil + dy, wo*stride - pad + j*dil + dx), bilinearly, each
of the four corners contributing 0 when it lies outside the map. conv_offset has the main conv's kernel, stride
and padding but no dilation (mmcv), and a bias. Deformable groups: 1 (all official configs).

Parameter names equal the official keys: ``weight`` (O, C/groups, kh, kw), ``conv_offset.weight``,
``conv_offset.bias``; no bias of its own (GN or BN always follows in SOLOv2).

Two implementations, equal to float32 rounding (tests/models/test_dcn.py):
* 'native' (the default on every device): `ops.deformable_conv2d` after reordering the offsets to MindSpore's
  (all dx, all dy, mask) layout. Measured here (CPU, oneDNN capped at AVX2), 1x256x40x40 3x3 256->256: 0.06-0.11 s
  in GRAPH, 0.11-0.15 s in PYNATIVE; its shape inference needs static H and W in GRAPH mode.
* 'gather': the four bilinear corners as row gathers of the (N*H*W, C) input, then one matmul; plain operators
  (exportable, dynamic shapes), 0.06 s in GRAPH, 0.25-0.3 s in PYNATIVE. But MindSpore 2.10's CPU GRAPH runtime
  keeps its (N, Ho*Wo, K, C) intermediates of every layer alive until the graph ends: R101-DCN at 512x320 needed
  over 19 GB (native: 1.6 GB).
* 'portable': 'gather' with its grid as constants of static shapes, for the ONNX export only
  (`solov2.models.portable`).
`resolve_impl('auto')` gives 'native'; SOLOV2_DCN_IMPL=gather|native in the environment overrides 'auto'.
"""
import os
from typing import Optional

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor
from mindspore.common.initializer import initializer

from solov2.models.portable import sampling_grid_constants, sigmoid_portable

DCN_TYPES = ("DCN", "DCNv2")
IMPLS = ("gather", "native", "portable")
IMPL_VAR = "SOLOV2_DCN_IMPL"
_MATMUL, _BATCH_MATMUL = ops.MatMul(), ops.BatchMatMul()


def resolve_impl(impl: str) -> str:
    """'auto' -> SOLOV2_DCN_IMPL if set ('gather' or 'native'), else 'native'; 'gather', 'native' and 'portable'
    (the ONNX export's, chosen by `SOLOv2(portable=True)` only) pass through."""
    if impl == "auto":
        impl = os.environ.get(IMPL_VAR) or "native"
        if impl == "portable":
            raise ValueError(f"{IMPL_VAR}=portable: the portable deformable convolution is for the ONNX export only; "
                             "use gather or native")
    if impl not in IMPLS:
        raise ValueError(f"deformable convolution implementation must be one of {IMPLS} or 'auto', got {impl!r}"
                         + (f" (from {IMPL_VAR})" if os.environ.get(IMPL_VAR) == impl else ""))
    return impl


def _sample_rows(x: Tensor, py: Tensor, px: Tensor, weight: Optional[Tensor], base: Tensor) -> Tensor:
    """Bilinear samples of x (N, C, H, W) at rows py, columns px (N, L, K) float -> (N, L, K, C).

    A corner outside the map contributes 0 (mmcv). weight (N, L, K) multiplies each sample (the DCNv2 mask).
    base (N, 1, 1) int32: the first flat row of each image in the (N*H*W, C) rows.
    """
    n, c, h, w = x.shape
    rows = ops.transpose(x, (0, 2, 3, 1)).reshape(-1, c)                       # (N*H*W, C)
    y0, x0 = ops.floor(py), ops.floor(px)
    ly, lx = py - y0, px - x0
    out = None
    for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yc, xc = y0 + dy, x0 + dx
        # A product of 0/1 masks, not `&`: the ONNX exporter has no BitwiseAnd (same values).
        inside = ((yc >= 0).astype(x.dtype) * (yc <= h - 1).astype(x.dtype) * (xc >= 0).astype(x.dtype)
                  * (xc <= w - 1).astype(x.dtype))
        wgt = wgt * inside if weight is None else wgt * inside * weight
        # Flat row indices in int32: float16 (mixed precision) holds integers exactly only up to 2048.
        idx = ops.clip(yc, 0, h - 1).astype(ms.int32) * w + ops.clip(xc, 0, w - 1).astype(ms.int32) + base
        g = ops.gather(rows, idx.reshape(-1), 0).reshape(idx.shape + (c,))
        term = g * ops.expand_dims(wgt, -1)
        out = term if out is None else out + term
    return out


def tap_positions(kh: int, kw: int, dilation: int) -> Tensor:
    """(2, K) float32: row and column of each kernel tap k = i*kw + j, times the dilation."""
    return Tensor([[float(i * dilation) for i in range(kh) for _ in range(kw)],
                   [float(j * dilation) for _ in range(kh) for j in range(kw)]], ms.float32)


def _dynamic_grid(offset: Tensor, stride: int, padding: int, rows_per_image: int):
    """`solov2.models.portable.sampling_grid_constants` from the graph's own shapes (dynamic H and W)."""
    oy = (ops.cumsum(ops.ones_like(offset[0, 0, :, 0]), 0) - 1) * stride - padding     # (Ho,)
    ox = (ops.cumsum(ops.ones_like(offset[0, 0, 0, :]), 0) - 1) * stride - padding     # (Wo,)
    base = (ops.cumsum(ops.ones_like(offset[:, 0, 0, 0]).astype(ms.int32), 0) - 1) * rows_per_image   # (N,)
    return oy, ox, base.reshape(-1, 1, 1)


def _deform_conv2d(x: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor, stride: int, padding: int,
                   dilation: int, groups: int, taps: Optional[Tensor], grid) -> Tensor:
    """The gather implementation given the sampling grid (oy (Ho,), ox (Wo,), base (N, 1, 1)); see below."""
    n, c = x.shape[0], x.shape[1]
    o, cg, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[2], offset.shape[3]
    off = ops.transpose(offset.reshape(n, k, 2, ho, wo), (0, 3, 4, 1, 2))       # (N, Ho, Wo, K, 2)
    # Sampling grid without the offsets: output position * stride - pad + tap position * dilation.
    oy, ox, base = grid
    oy, ox = oy.astype(x.dtype), ox.astype(x.dtype)
    taps = (tap_positions(kh, kw, dilation) if taps is None else taps).astype(x.dtype)     # (2, K)
    py = oy.reshape(1, -1, 1, 1) + taps[0].reshape(1, 1, 1, k) + off[..., 0]            # (N, Ho, Wo, K)
    px = ox.reshape(1, 1, -1, 1) + taps[1].reshape(1, 1, 1, k) + off[..., 1]
    m = None if mask is None else ops.transpose(mask, (0, 2, 3, 1)).reshape(n, -1, k)
    cols = _sample_rows(x, py.reshape(n, -1, k), px.reshape(n, -1, k), m, base)    # (N, L, K, C)
    # weight (O, C/g, kh, kw) -> (g, K*C/g, O/g), matching the (tap, channel) order of cols.
    og = o // groups
    wmat = ops.transpose(weight.reshape(groups, og, cg, k), (0, 3, 2, 1)).reshape(groups, k * cg, og)
    # The MatMul/BatchMatMul primitives: ops.matmul (MatMulExt) logs a warning per layer with dynamic shapes in GRAPH.
    if groups == 1:
        out = _MATMUL(cols.reshape(-1, k * c), wmat[0]).reshape(n, -1, o)              # (N, L, O)
        return ops.transpose(out, (0, 2, 1)).reshape(n, o, ho, wo)
    cols = ops.transpose(cols.reshape(-1, k, groups, cg), (2, 0, 1, 3)).reshape(groups, -1, k * cg)  # (g, N*L, K*C/g)
    out = _BATCH_MATMUL(cols, wmat).reshape(groups, n, -1, og)                    # (g, N, L, O/g)
    return ops.transpose(out, (1, 0, 3, 2)).reshape(n, o, ho, wo)


def deform_conv2d_gather(x: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor, stride: int,
                         padding: int, dilation: int, groups: int, taps: Optional[Tensor] = None) -> Tensor:
    """Deformable convolution. x (N, C, H, W); offset (N, 2K, Ho, Wo) mmcv layout (2k = dy, 2k+1 = dx);
    mask (N, K, Ho, Wo) or None; weight (O, C/groups, kh, kw); K = kh*kw; taps: `tap_positions` (a constant the
    cell builds once; GRAPH mode cannot build it). Returns (N, O, Ho, Wo), x's dtype."""
    grid = _dynamic_grid(offset, stride, padding, x.shape[2] * x.shape[3])
    return _deform_conv2d(x, offset, mask, weight, stride, padding, dilation, groups, taps, grid)


def deform_conv2d_portable(x: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor, stride: int,
                           padding: int, dilation: int, groups: int, taps: Optional[Tensor] = None) -> Tensor:
    """`deform_conv2d_gather` with its grid as constants of the static shapes (the ONNX exporter has no CumSum)."""
    grid = sampling_grid_constants(offset, stride, padding, x.shape[2] * x.shape[3])
    return _deform_conv2d(x, offset, mask, weight, stride, padding, dilation, groups, taps, grid)


def deform_conv2d_native(x: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor, stride: int,
                         padding: int, dilation: int, groups: int, taps: Optional[Tensor] = None) -> Tensor:
    """Same contract as `deform_conv2d_gather`, through `ops.deformable_conv2d` (offsets (all dx, all dy, mask)).

    Its shape inference fails when H and W are unknown (GRAPH mode with dynamic shapes: "Shape should have only
    one -2 ..."), so models with this implementation run GRAPH inference at static shapes (`SOLOv2.static_only`).
    """
    n, _, ho, wo = offset.shape
    kh, kw = weight.shape[2], weight.shape[3]
    o = offset.reshape(n, kh * kw, 2, ho, wo)
    m = ops.ones_like(o[:, :, 0]) if mask is None else mask
    offsets = ops.concat((o[:, :, 1], o[:, :, 0], m), axis=1)
    return ops.deformable_conv2d(x, weight, offsets, (kh, kw), (1, 1, stride, stride),
                                 (padding, padding, padding, padding), dilations=(1, 1, dilation, dilation),
                                 groups=groups, deformable_groups=1, modulated=True)


class DeformConv2d(nn.Cell):
    """mmcv DeformConvPack (kind='DCN') or ModulatedDeformConvPack (kind='DCNv2'), without bias.

    x (N, cin, H, W) -> (N, cout, Ho, Wo) with the usual convolution output size. conv_offset starts at zero
    (mmcv init_offset): an untrained layer is the plain convolution with `weight`.
    """

    def __init__(self, cin: int, cout: int, k: int, *, kind: str, stride: int, padding: int, dilation: int = 1,
                 groups: int = 1, weight_init, offset_init="zeros", impl: str):
        super().__init__()
        if kind not in DCN_TYPES:
            raise ValueError(f"deformable convolution type must be one of {DCN_TYPES}, got {kind!r}")
        self.kind, self.stride, self.padding, self.dilation, self.groups = kind, stride, padding, dilation, groups
        self.modulated = kind == "DCNv2"
        self.k2 = k * k
        self.impl = resolve_impl(impl)
        self.weight = Parameter(initializer(weight_init, (cout, cin // groups, k, k), ms.float32), name="weight")
        self.conv_offset = nn.Conv2d(cin, (3 if self.modulated else 2) * k * k, k, stride=stride, pad_mode="pad",
                                     padding=padding, has_bias=True, weight_init=offset_init, bias_init="zeros")
        if self.impl == "native":
            self._conv = deform_conv2d_native
        elif self.impl == "gather":
            self._conv = deform_conv2d_gather
        else:
            self._conv = deform_conv2d_portable
        self._sigmoid = sigmoid_portable if self.impl == "portable" else ops.sigmoid
        self.taps = tap_positions(k, k, dilation)

    def construct(self, x: Tensor) -> Tensor:
        out = self.conv_offset(x)
        if self.modulated:
            offset, mask = out[:, :2 * self.k2], self._sigmoid(out[:, 2 * self.k2:])
        else:
            offset, mask = out, None
        return self._conv(x, offset, mask, self.weight.astype(x.dtype), self.stride, self.padding, self.dilation,
                          self.groups, self.taps)
