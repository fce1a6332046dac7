"""Image transforms of the official mmdetection-1.x pipeline, in NumPy/cv2.

All images are HWC uint8 BGR as read by ``cv2.imread`` unless stated otherwise.
"""
from typing import Sequence, Tuple

import cv2
import numpy as np

from solov2.errors import SolovError


def rescale_size(h: int, w: int, scale: Tuple[int, int]) -> Tuple[Tuple[int, int], float]:
    """Keep-ratio target size for an (h, w) image and a (long, short) scale.

    Returns ((new_h, new_w), scale_factor) with
    ``sf = min(long / max(h, w), short / min(h, w))`` and ``new = int(x * sf + 0.5)`` (mmcv.imrescale).
    """
    long_edge, short_edge = max(scale), min(scale)
    sf = min(long_edge / max(h, w), short_edge / min(h, w))
    return (int(h * sf + 0.5), int(w * sf + 0.5)), sf


def resize_keep_ratio(img: np.ndarray, scale: Tuple[int, int]) -> Tuple[np.ndarray, float]:
    """Bilinear (cv2.INTER_LINEAR) keep-ratio resize. img (H, W, C) -> (H', W', C), scale_factor."""
    (nh, nw), sf = rescale_size(img.shape[0], img.shape[1], scale)
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR), sf


def normalize(img_bgr: np.ndarray, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (H, W, 3) float32 ``(x - mean) / std`` (RGB if to_rgb), as mmcv.imnormalize."""
    img = img_bgr[..., ::-1] if to_rgb else img_bgr
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    return (img.astype(np.float32) - mean32) / std32


def round_up(x: int, divisor: int) -> int:
    """The smallest multiple of `divisor` that is >= x (the Pad step's rule)."""
    return -(-x // divisor) * divisor


def pad_to_multiple(img: np.ndarray, divisor: int = 32, value: float = 0) -> np.ndarray:
    """Pad bottom/right so H and W are multiples of `divisor`. img (H, W, ...) -> (Hp, Wp, ...)."""
    h, w = img.shape[:2]
    ph, pw = round_up(h, divisor), round_up(w, divisor)
    if (ph, pw) == (h, w):
        return img
    pad = [(0, ph - h), (0, pw - w)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pad, mode="constant", constant_values=value)


def padded_test_size(h: int, w: int, scale: Tuple[int, int], size_divisor: int = 32) -> Tuple[int, int]:
    """(Hp, Wp): the network input of an (h, w) image through `preprocess_test`, known from the size alone (a
    dataset's annotated sizes are checked before its images run). SolovError when it rescales to nothing."""
    (nh, nw), _ = rescale_size(h, w, scale)
    if min(nh, nw) < 1:   # cv2.resize would fail naming nothing
        raise SolovError(f"a {h}x{w} image rescales to {nh}x{nw} at the test scale {tuple(scale)}: too thin to "
                         "detect anything in")
    return round_up(nh, size_divisor), round_up(nw, size_divisor)


def preprocess_test(img_bgr: np.ndarray, scale: Tuple[int, int], mean, std, to_rgb: bool = True,
                    size_divisor: int = 32):
    """Official test pipeline for one image: Resize(keep_ratio) -> Normalize -> Pad(32).

    Returns (x, meta): x float32 (1, 3, Hp, Wp); meta with ori_shape, img_shape, pad_shape (h, w, c)
    and scale_factor.
    """
    padded_test_size(img_bgr.shape[0], img_bgr.shape[1], scale, size_divisor)   # too thin: an error naming sizes
    resized, sf = resize_keep_ratio(img_bgr, scale)
    padded = pad_to_multiple(normalize(resized, mean, std, to_rgb), size_divisor)
    x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None])
    meta = dict(ori_shape=tuple(img_bgr.shape), img_shape=tuple(resized.shape),
                pad_shape=tuple(padded.shape), scale_factor=sf)
    return x, meta
