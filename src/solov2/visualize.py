"""Drawing of SOLOv2 instances on an image (OpenCV only)."""
from typing import Sequence, Tuple

import cv2
import numpy as np

# Fixed BGR palette (well separated hues, mid brightness so white/black text stays readable on it);
# colour of label c = _PALETTE[c % len(_PALETTE)], so a class keeps its colour across images.
_PALETTE = np.array([
    (75, 25, 230), (75, 180, 60), (25, 225, 255), (200, 130, 0), (48, 130, 245), (180, 30, 145),
    (240, 240, 70), (230, 50, 240), (60, 245, 210), (212, 190, 250), (128, 128, 0), (255, 190, 220),
    (40, 110, 170), (200, 250, 255), (0, 0, 128), (195, 255, 170), (0, 128, 128), (180, 215, 255),
    (128, 0, 0), (128, 128, 128), (0, 255, 127), (255, 144, 30), (147, 20, 255), (0, 215, 255),
], dtype=np.uint8)

_ALPHA = 0.45                     # mask opacity: the object stays visible under its mask
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def label_color(label: int) -> Tuple[int, int, int]:
    """BGR colour (ints) of a class channel."""
    return tuple(int(v) for v in _PALETTE[int(label) % len(_PALETTE)])


def _text_color(bg: Tuple[int, int, int]) -> Tuple[int, int, int]:
    luma = 0.114 * bg[0] + 0.587 * bg[1] + 0.299 * bg[2]
    return (0, 0, 0) if luma > 150 else (255, 255, 255)


def _overlaps(box, boxes) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < bx1 and bx0 < x1 and y0 < by1 and by0 < y1 for bx0, by0, bx1, by1 in boxes)


def _draw_caption(img: np.ndarray, text: str, mask: np.ndarray, color, font_scale: float, thickness: int,
                  placed: list) -> None:
    """Filled box with `text` just above the topmost pixels of `mask`, centred on them.

    Falls back to inside the mask when there is no room above, and moves down past captions already in
    `placed` (list of (x0, y0, x1, y1), updated): a caption a little below its mask's top is easier to
    read than two captions on top of each other.
    """
    ys, xs = np.nonzero(mask)
    y_top = int(ys.min())
    top_row = xs[ys == y_top]
    (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, thickness)
    box_w, box_h = tw + 4, th + base + 2
    h, w = img.shape[:2]
    x = int(round((int(top_row.min()) + int(top_row.max())) / 2 - box_w / 2))
    x = min(max(x, 0), max(w - box_w, 0))
    y = y_top - box_h if y_top >= box_h else y_top
    while _overlaps((x, y, x + box_w, y + box_h), placed) and y + 2 * box_h <= h:
        y += box_h
    y = min(y, max(h - box_h, 0))
    placed.append((x, y, x + box_w, y + box_h))
    cv2.rectangle(img, (x, y), (x + box_w - 1, y + box_h - 1), color, thickness=-1)
    cv2.putText(img, text, (x + 2, y + th + 1), _FONT, font_scale, _text_color(color), max(1, thickness // 2),
                cv2.LINE_AA)


def draw_instances(img_bgr: np.ndarray, masks: np.ndarray, labels: Sequence[int], scores: Sequence[float],
                   class_names: Sequence[str], score_thr: float = 0.3) -> np.ndarray:
    """Overlay instance masks on an image.

    Each instance with score >= score_thr gets a semi-transparent fill and an outline in its class colour
    and a "class score" caption at the top of the mask. Lower scores are drawn first so the most
    confident masks end on top; captions are drawn last so no mask covers them.
    Args:
        img_bgr: uint8 (H, W, 3) BGR image (not modified).
        masks: bool (n, H, W); labels: int (n,) class channel; scores: float (n,).
        class_names: name of every class channel.
    Returns:
        uint8 (H, W, 3) BGR image.
    """
    img_bgr = np.asarray(img_bgr)
    if img_bgr.dtype != np.uint8 or img_bgr.ndim != 3 or img_bgr.shape[2] != 3:
        raise ValueError(f"img_bgr must be uint8 (H, W, 3), got {img_bgr.dtype} {img_bgr.shape}")
    masks = np.asarray(masks, dtype=bool)
    if len(masks) and masks.shape[1:] != img_bgr.shape[:2]:
        raise ValueError(f"masks {masks.shape[1:]} and image {img_bgr.shape[:2]} sizes differ")
    scores = np.asarray(scores, dtype=np.float64)
    out = img_bgr.copy()
    h, w = out.shape[:2]
    # Line width and text size follow the image size so captions stay legible on large and small images.
    thickness = max(1, int(round(min(h, w) / 400)))
    font_scale = max(0.35, min(h, w) / 900)
    order = [i for i in np.argsort(scores, kind="stable") if scores[i] >= score_thr and masks[i].any()]
    for i in order:
        color = label_color(labels[i])
        m = masks[i]
        blended = out[m].astype(np.float32) * (1 - _ALPHA) + np.float32(_ALPHA) * np.array(color, np.float32)
        out[m] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, color, thickness, cv2.LINE_AA)
    placed = []
    for i in order[::-1]:                 # the most confident caption gets its preferred place
        text = f"{class_names[int(labels[i])]} {scores[i]:.2f}"
        _draw_caption(out, text, masks[i], label_color(labels[i]), font_scale, thickness, placed)
    return out
