"""Synthetic "shapes" instance-segmentation dataset for the demo: COCO json + jpgs, made here (no licence issues).

Every image is W x H (default 160 x 128) with a textured, noisy background (colour gradient, blotches, pixel
noise, thin lines) and 1-3 filled shapes of three classes (circle, rectangle, triangle) of random size, position
and orientation; later shapes may partly hide earlier ones. Annotations are the *visible* masks as compressed
COCO RLE (exact, also when occlusion splits a shape), with bbox/area taken from the mask.

Colours: by default each class has its own hue family (circle red, rectangle green, triangle blue; random hue
jitter, saturation and brightness). Why: a SOLOv2 trained from random weights for a few minutes on a CPU learns
to segment instances quickly, but learns to tell shapes apart from their outline alone far too slowly for the
demo (measured: after 250-500 iterations its class scores were still identical for the three shapes, mask AP50
~0.15). `class_colours=False` gives random colours, i.e. classes defined by shape alone (the harder variant).

Everything is a pure function of (seed, split, image index): the same arguments give byte-identical files.

    python -m solov2.tools.synthetic OUT_DIR [--num-train 200] [--num-val 50] [--seed 0] [--random-colours]
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

from solov2.files import write_image, write_json_atomic

CLASSES = ("circle", "rectangle", "triangle")
SPLIT_KEYS = {"train": 1, "val": 2}


def _rng(seed: int, split: str, index: int) -> np.random.RandomState:
    key = np.random.SeedSequence([seed, SPLIT_KEYS[split], index]).generate_state(1)[0]
    return np.random.RandomState(key)


def background(rng: np.random.RandomState, h: int, w: int, clutter: float = 1.0) -> np.ndarray:
    """Colour gradient + low-frequency blotches + pixel noise + a few thin lines (clutter that is not an object).

    clutter scales the blotches and the noise; 0 also drops the lines.
    """
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = np.linspace(0, 1, w if rng.rand() < 0.5 else h, dtype=np.float32)
    grad = c0 + (c1 - c0) * t[:, None]
    img = np.broadcast_to(grad[None] if len(t) == w else grad[:, None], (h, w, 3)).astype(np.float32)
    blotch = cv2.resize(rng.normal(0, 25, (h // 32 + 2, w // 32 + 2, 3)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    img = img + clutter * (blotch + rng.normal(0, 12, (h, w, 3)).astype(np.float32))
    for _ in range(rng.randint(2, 6) if clutter > 0 else 0):
        p0 = (int(rng.randint(0, w)), int(rng.randint(0, h)))
        p1 = (int(rng.randint(0, w)), int(rng.randint(0, h)))
        cv2.line(img, p0, p1, tuple(float(v) for v in rng.uniform(0, 255, 3)), 1, cv2.LINE_AA)
    return img


def class_colour(rng: np.random.RandomState, label: int) -> np.ndarray:
    """BGR colour from the class's own hue family (red / green / blue, +-12 deg hue, random saturation and value)."""
    hsv = np.uint8([[[(label * 60 + rng.randint(-6, 7)) % 180, rng.randint(140, 256), rng.randint(120, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64)


def shape_mask(rng: np.random.RandomState, label: int, h: int, w: int, size: float) -> np.ndarray:
    """uint8 (h, w) mask of one shape of class `label` (0 circle, 1 rectangle, 2 triangle), about `size` px wide."""
    m = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(size * 0.35, w - size * 0.35), rng.uniform(size * 0.35, h - size * 0.35)
    if label == 0:
        cv2.circle(m, (int(cx), int(cy)), int(size / 2), 1, -1, cv2.LINE_8)
    elif label == 1:
        # rotated rectangle, aspect 0.5-1 so it stays distinguishable from a line
        rect = ((cx, cy), (size, size * rng.uniform(0.5, 1.0)), rng.uniform(0, 90))
        cv2.fillPoly(m, [np.round(cv2.boxPoints(rect)).astype(np.int32)], 1)
    else:
        ang = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        pts = np.stack([cx + size * 0.6 * np.cos(ang), cy + size * 0.6 * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m


def make_image(rng: np.random.RandomState, h: int = 128, w: int = 160, min_objects: int = 1, max_objects: int = 3,
               size_range: Tuple[float, float] = (0.25, 0.6), clutter: float = 0.5, class_colours: bool = True
               ) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """-> (BGR uint8 image, [(label 0..2, visible uint8 mask)]). Instances are at least 60% visible.

    size_range: shape size as a fraction of min(h, w) (32-77 px on 160 x 128); clutter: background strength;
    class_colours: colour from the class's hue family (else uniformly random).
    """
    img = background(rng, h, w, clutter)
    lo, hi = size_range[0] * min(h, w), size_range[1] * min(h, w)
    min_area = (lo * 0.5) ** 2
    placed: List[Tuple[int, np.ndarray, np.ndarray]] = []   # (label, full mask, visible mask)
    for _ in range(rng.randint(min_objects, max_objects + 1)):
        for _try in range(20):
            label = int(rng.randint(len(CLASSES)))
            m = shape_mask(rng, label, h, w, rng.uniform(lo, hi))
            area = int(m.sum())
            # occluding an earlier shape is allowed, hiding most of it is not (it would be an unfair target)
            if area < min_area or any(int((p[2] & m).sum()) > 0.4 * int(p[1].sum()) for p in placed):
                continue
            for p in placed:
                p[2][m > 0] = 0
            placed.append((label, m, m.copy()))
            colour = class_colour(rng, label) if class_colours else rng.uniform(0, 255, 3)
            mean_bg = img[m > 0].mean(axis=0)
            # keep a visible contrast to the background under a random colour
            if not class_colours and np.abs(colour - mean_bg).max() < 60:
                colour = np.where(mean_bg > 127, mean_bg - 100, mean_bg + 100)
            shade = rng.normal(0, 8, (h, w, 1)).astype(np.float32)          # slightly textured fill
            img[m > 0] = (colour[None] + shade[m > 0])
            break
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, [(label, vis) for label, _, vis in placed if vis.sum() >= min_area / 2]


def write_split(out_dir: Path, split: str, num_images: int, seed: int = 0, h: int = 128, w: int = 160,
                **style) -> Path:
    """Write OUT/<split>/*.jpg and OUT/annotations/instances_<split>.json; returns the json path.

    style: keyword arguments of `make_image` (min_objects, max_objects, size_range, clutter, class_colours).
    """
    img_dir, ann_dir = out_dir / split, out_dir / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        img, instances = make_image(_rng(seed, split, i), h, w, **style)
        name = f"{split}_{i:05d}.jpg"
        write_image(img_dir / name, img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=i + 1, file_name=name, width=w, height=h))
        for label, m in instances:
            rle = mask_util.encode(np.asfortranarray(m))
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=label + 1, iscrowd=0,
                             area=float(mask_util.area(rle)), bbox=[float(v) for v in mask_util.toBbox(rle)],
                             segmentation=dict(size=[h, w], counts=rle["counts"].decode("ascii"))))
    data = dict(info=dict(description="SOLOv2 demo synthetic shapes", version="1.0"), licenses=[],
                images=images, annotations=anns,
                categories=[dict(id=k + 1, name=n, supercategory="shape") for k, n in enumerate(CLASSES)])
    path = split_paths(out_dir)[f"{split}_ann"]
    write_json_atomic(path, data)
    return Path(path)


def split_paths(out_dir) -> Dict[str, str]:
    """dict(train_ann, train_img, val_ann, val_img) of a dataset generated in out_dir (str paths, as the config
    wants them); known before the data is written, so a config can be loaded once, with them."""
    out = Path(out_dir)
    return {key: value for split in ("train", "val") for key, value in
            ((f"{split}_ann", str(out / "annotations" / f"instances_{split}.json")),
             (f"{split}_img", str(out / split) + "/"))}


def generate(out_dir, num_train: int = 200, num_val: int = 50, seed: int = 0, h: int = 128, w: int = 160,
             **style) -> Dict[str, str]:
    """Both splits -> `split_paths(out_dir)`.

    style: keyword arguments of `make_image` (min_objects, max_objects, size_range, clutter, class_colours).
    """
    out = Path(out_dir)
    for split, n in (("train", num_train), ("val", num_val)):
        write_split(out, split, n, seed, h, w, **style)
    return split_paths(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-val", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-colours", action="store_true", help="classes by shape alone (harder)")
    a = p.parse_args()
    print(json.dumps(generate(a.out_dir, a.num_train, a.num_val, a.seed, class_colours=not a.random_colours),
                     indent=1))


if __name__ == "__main__":
    main()
