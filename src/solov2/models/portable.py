"""ONNX-exportable formulations of the operators MindSpore 2.10's ONNX exporter refuses (export only).

`SOLOv2(cfg, portable=True)` builds its cells with these instead of the native operators; everything else is the
same model with the same parameter names. The exporter has no converter for GroupNorm, ResizeBilinearV2,
ResizeNearestNeighborV2, MaxPoolWithArgmaxV2 (`ops.max_pool2d`), a padded MaxPool, LinSpace, CumSum and
BitwiseAnd; these use reshape/ReduceMean, MatMul with constant interpolation matrices, ResizeNearestNeighbor,
strided slices, Maximum and precomputed constants instead. They need static shapes (the export is at one input
size): every size-dependent constant is built in NumPy from the static shapes when the graph is compiled.

Not for training: the backward of the strided slice `subsample2` segfaults in PYNATIVE mode (MindSpore 2.10 CPU).
tests/models/test_portable.py holds every function here equal to its native counterpart (1e-5).
"""
import numpy as np
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor
from mindspore.common.initializer import initializer


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of torch's bilinear resize along one axis (align_corners=False, half-pixel
    centres, source index clamped at 0, no antialias): out = M @ in."""
    m = np.zeros((n_out, n_in), np.float32)
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).astype(np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m


def resize_bilinear_portable(x: Tensor, size) -> Tensor:
    """`resize_bilinear` as Mh @ x @ Mw^T. x (N, C, H, W) static float32; size (h, w) ints -> (N, C, h, w)."""
    h_in, w_in = x.shape[-2:]
    mh = Tensor(bilinear_matrix(h_in, size[0]))               # (h, H)
    mw_t = Tensor(bilinear_matrix(w_in, size[1]).T.copy())    # (W, w)
    return ops.matmul(ops.matmul(mh, x), mw_t)


def resize_nearest_portable(x: Tensor, size) -> Tensor:
    """`resize_nearest` (source index floor(dst * in / out)) through the exportable ResizeNearestNeighbor.

    x (N, C, H, W); size (h, w) ints -> (N, C, h, w)."""
    return ops.ResizeNearestNeighbor((int(size[0]), int(size[1])))(x)


def subsample2(x: Tensor) -> Tensor:
    """The official max_pool2d(x, kernel_size=1, stride=2) as x[..., ::2, ::2]: (N, C, H, W) -> (N, C, ceil(H/2),
    ceil(W/2)). Forward only (its backward segfaults in PYNATIVE mode)."""
    return x[:, :, ::2, ::2]


def sigmoid_portable(x: Tensor) -> Tensor:
    """sigmoid as 1 / (1 + exp(-x)) (Div, not the Reciprocal the exporter lacks). onnxruntime's own Sigmoid is an
    approximation with ~1e-7 absolute error: 100 % relative error on the tiny scores of most grid cells, which
    ties neighbours and changes what points-NMS keeps; this form is within 5e-6 relative of MindSpore's."""
    return ops.div(ops.ones_like(x), 1.0 + ops.exp(-x))


def points_nms_portable(heat: Tensor) -> Tensor:
    """`points_nms` without the padded max-pool: a score survives if it is >= its top, left and top-left
    neighbours. heat (N, C, S, S) in [0, 1] -> same shape.

    The official pool pads with -inf; a zero row/column is the same here because the scores are >= 0."""
    n, c, h, w = heat.shape
    p = ops.concat((ops.zeros((n, c, 1, w), heat.dtype), heat), axis=2)       # (N, C, S+1, S)
    p = ops.concat((ops.zeros((n, c, h + 1, 1), heat.dtype), p), axis=3)      # (N, C, S+1, S+1)
    hmax = ops.maximum(ops.maximum(p[:, :, 1:, 1:], p[:, :, :-1, 1:]), ops.maximum(p[:, :, 1:, :-1], p[:, :, :-1, :-1]))
    return heat * (hmax == heat).astype(heat.dtype)


def coord_features_portable(x: Tensor) -> Tensor:
    """`coord_features` as constants: x (N, C, H, W) -> (N, 2, H, W) float32, channel 0 = linspace(-1, 1, W)
    along the width, channel 1 = linspace(-1, 1, H) along the height."""
    n, _, h, w = x.shape
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)
    grid = np.stack((np.broadcast_to(xs[None, :], (h, w)), np.broadcast_to(ys[:, None], (h, w))))[None]
    return Tensor(np.ascontiguousarray(np.broadcast_to(grid, (n, 2, h, w))))


class GroupNormPortable(nn.Cell):
    """nn.GroupNorm(num_groups, num_channels, eps) as reshape + ReduceMean, with the same parameter names
    (`gamma`, `beta`). x (N, C, H, W) float32 -> same shape: per group (x - mean) / sqrt(var + eps), biased var."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups, self.eps = num_groups, eps
        self.gamma = Parameter(initializer("ones", (num_channels,), ms.float32), name="gamma")
        self.beta = Parameter(initializer("zeros", (num_channels,), ms.float32), name="beta")

    def construct(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = x.reshape(n, self.num_groups, -1)
        mean = g.mean(axis=2, keep_dims=True)
        centred = g - mean
        var = (centred * centred).mean(axis=2, keep_dims=True)
        y = (centred / ops.sqrt(var + self.eps)).reshape(n, c, h, w)
        return y * self.gamma.reshape(1, -1, 1, 1) + self.beta.reshape(1, -1, 1, 1)


def sampling_grid_constants(offset: Tensor, stride: int, padding: int, rows_per_image: int):
    """The CumSum-free constants of `solov2.models.dcn.deform_conv2d_gather` at the static shape of offset
    (N, 2K, Ho, Wo): output rows (Ho,) and columns (Wo,) as sampling positions (index * stride - padding) float32,
    and the first flat row of each image in the (N*H*W, C) input, (N, 1, 1) int32 (rows_per_image = H*W)."""
    n, _, ho, wo = offset.shape
    oy = Tensor(np.arange(ho, dtype=np.float32) * stride - padding)
    ox = Tensor(np.arange(wo, dtype=np.float32) * stride - padding)
    base = Tensor((np.arange(n, dtype=np.int32) * rows_per_image).reshape(-1, 1, 1))
    return oy, ox, base
