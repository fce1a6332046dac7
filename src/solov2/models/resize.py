"""Resizes that work with dynamic-shape inputs (one GRAPH compile for every image size).

`ops.interpolate` builds its size argument in Python (tuple checks, zip), which GRAPH mode refuses when H and W
are unknown at compile time ("the dynamic length input is unsupported"). The primitives it dispatches to take the
size as graph values, so these call them directly, with the same semantics.
"""
import mindspore as ms
import mindspore.ops as ops
from mindspore import Tensor

_BILINEAR = ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=True)
_NEAREST = ops.ResizeNearestNeighborV2()


def resize_bilinear(x: Tensor, size) -> Tensor:
    """torch ``F.interpolate(x, size, mode='bilinear', align_corners=False)``: half-pixel, no antialias.

    x (N, C, H, W) float; size (h, w) ints (static or graph scalars) -> (N, C, h, w).
    """
    return _BILINEAR(x, size)


def resize_nearest(x: Tensor, size) -> Tensor:
    """torch ``F.interpolate(x, size, mode='nearest')``: source index floor(dst * in / out).

    x (N, C, H, W); size (h, w) ints (static or graph scalars) -> (N, C, h, w). The primitive wants an int32
    size tensor.
    """
    hw = ops.stack([ops.scalar_to_tensor(size[0], ms.int32), ops.scalar_to_tensor(size[1], ms.int32)])
    return _NEAREST(x, hw)
