"""Synthetic "shapes" instance-segmentation dataset for the demo: COCO json + jpgs, made here (no licence issues).

Every image is W x H (default 256 x 192) with a textured, noisy background and 2-4 filled shapes of three
classes (circle, rectangle, triangle) of random colour, size and position; later shapes may partly hide earlier
ones. Annotations are the *visible* masks as compressed COCO RLE (exact, also when occlusion splits a shape),
with bbox/area taken from the mask.

Everything is a pure function of (seed, split, image index): the same arguments give byte-identical files.

    python -m solov2.synthetic OUT_DIR [--num-train 160] [--num-val 40] [--seed 0]
"""
import argparse
import json
import os
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

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


def make_image(rng: np.random.RandomState, h: int = 192, w: int = 256, min_objects: int = 2, max_objects: int = 4,
               size_range: Tuple[float, float] = (0.15, 0.52), clutter: float = 1.0
               ) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """-> (BGR uint8 image, [(label 0..2, visible uint8 mask)]). Instances are at least 60% visible.

    size_range: shape size as a fraction of min(h, w) (28-100 px on 256 x 192).
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
            colour = rng.uniform(0, 255, 3)
            mean_bg = img[m > 0].mean(axis=0)
            if np.abs(colour - mean_bg).max() < 60:  # keep a visible contrast to the background under it
                colour = np.where(mean_bg > 127, mean_bg - 100, mean_bg + 100)
            shade = rng.normal(0, 8, (h, w, 1)).astype(np.float32)          # slightly textured fill
            img[m > 0] = (colour[None] + shade[m > 0])
            break
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, [(label, vis) for label, _, vis in placed if vis.sum() >= min_area / 2]


def write_split(out_dir: Path, split: str, num_images: int, seed: int = 0, h: int = 192, w: int = 256,
                **style) -> Path:
    """Write OUT/<split>/*.jpg and OUT/annotations/instances_<split>.json; returns the json path.

    style: keyword arguments of `make_image` (min_objects, max_objects, size_range, clutter).
    """
    img_dir, ann_dir = out_dir / split, out_dir / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        img, instances = make_image(_rng(seed, split, i), h, w, **style)
        name = f"{split}_{i:05d}.jpg"
        cv2.imwrite(str(img_dir / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=i + 1, file_name=name, width=w, height=h))
        for label, m in instances:
            rle = mask_util.encode(np.asfortranarray(m))
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=label + 1, iscrowd=0,
                             area=float(mask_util.area(rle)), bbox=[float(v) for v in mask_util.toBbox(rle)],
                             segmentation=dict(size=[h, w], counts=rle["counts"].decode("ascii"))))
    data = dict(info=dict(description="SOLOv2 demo synthetic shapes", version="1.0"), licenses=[],
                images=images, annotations=anns,
                categories=[dict(id=k + 1, name=n, supercategory="shape") for k, n in enumerate(CLASSES)])
    path = ann_dir / f"instances_{split}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    return path


def generate(out_dir, num_train: int = 160, num_val: int = 40, seed: int = 0, h: int = 192, w: int = 256,
             **style) -> Dict[str, str]:
    """Both splits -> dict(train_ann, train_img, val_ann, val_img) (str paths, as the config wants them).

    style: keyword arguments of `make_image` (min_objects, max_objects, size_range, clutter).
    """
    out = Path(out_dir)
    paths = {}
    for split, n in (("train", num_train), ("val", num_val)):
        paths[f"{split}_ann"] = str(write_split(out, split, n, seed, h, w, **style))
        paths[f"{split}_img"] = str(out / split) + "/"
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--num-train", type=int, default=160)
    p.add_argument("--num-val", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(json.dumps(generate(a.out_dir, a.num_train, a.num_val, a.seed), indent=1))


if __name__ == "__main__":
    main()
