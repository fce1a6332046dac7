"""The demo: synthetic dataset -> SOLOv2 light-R18 trained from scratch on CPU -> COCO AP -> a picture of predictions.

    python -m solov2.tools.demo [--out demo_out] [--epochs N] [--device_target CPU] [--mode graph|pynative] [--force]

Nothing is downloaded: the data is generated (`solov2.tools.synthetic`) and the backbone starts from random weights.
Writes into OUT:
  data/                     the generated COCO dataset (train/, val/, annotations/)
  work/                     the training work dir (train.log, log.json, loss_curve.png, epoch_N.ckpt)
  results_val.json          COCO results of the final model on the val split
  metrics.json              segm/bbox AP, AP50, AP75, per class, wall time per phase, settings, machine load
  predictions.jpg           a grid of val images with the predicted masks
An existing OUT is refused unless --force is given; --force replaces only the entries above, nothing else in OUT.
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from solov2.cli.common import add_runtime_flags, check_flag_range, cli_main
from solov2.errors import SolovError
from solov2.files import already_exists, write_image

# the repo's config (editable install / source tree), else the one under the current directory
CONFIG = Path(__file__).resolve().parents[3] / "configs" / "solov2" / "solov2_light_r18_demo.py"
if not CONFIG.is_file():
    CONFIG = Path("configs") / "solov2" / CONFIG.name
NUM_TRAIN = 200
OUTPUTS = ("data", "work", "results_val.json", "metrics.json", "predictions.jpg")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's total_epochs)")
    p.add_argument("--num-train", type=int, default=NUM_TRAIN, help="generated training images (default: %(default)s)")
    p.add_argument("--num-val", type=int, default=50, help="generated validation images (default: %(default)s)")
    p.add_argument("--random-colours", action="store_true",
                   help="harder data: classes by shape alone, not shape + colour family (needs far more training)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset and of the training (default: 0)")
    p.add_argument("--config", default=str(CONFIG), help=f"demo config (default: configs/solov2/{CONFIG.name})")
    p.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more config overrides, e.g. lr_config.warmup_iters=10 for a short smoke run")
    add_runtime_flags(p)
    p.add_argument("--force", action="store_true", help="replace the demo outputs of an existing --out")
    a = p.parse_args(argv)
    for key in ("epochs", "num_train", "num_val"):
        if getattr(a, key) is not None and getattr(a, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    return a


def prepare_out(out: Path, force: bool) -> None:
    """Refuse to touch an existing demo output without --force; with it, remove only what the demo writes."""
    if out.exists() and not out.is_dir():
        raise SolovError(f"{out}: exists and is not a folder")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise already_exists(out, f" with demo output ({', '.join(existing)})")
    for name in existing:
        path = out / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def data_overrides(paths: dict) -> list:
    """Config overrides for the generated data (its val split is also the test split)."""
    return [f"data.train.ann_file={paths['train_ann']}", f"data.train.img_prefix={paths['train_img']}",
            f"data.val.ann_file={paths['val_ann']}", f"data.val.img_prefix={paths['val_img']}",
            f"data.test.ann_file={paths['val_ann']}", f"data.test.img_prefix={paths['val_img']}"]


def with_epochs(optim, epochs: Optional[int]):
    """The schedule over `epochs` (None: unchanged), lr steps kept at the same fraction of the run."""
    if epochs is None:
        return optim
    total = optim.total_epochs
    # an lr step at epoch 0 would decay from the start, one at or past the end never: keep 1 <= step < epochs
    steps = sorted({s for s in (max(1, round(s * epochs / total)) for s in optim.lr_steps) if s < epochs})
    return dataclasses.replace(optim, total_epochs=epochs, lr_steps=tuple(steps))


def image_size(cfg) -> tuple:
    """(h, w) of the generated images = the (single) train scale, so no resampling happens anywhere."""
    scales = cfg.data.train_scales
    if len(scales) != 1 or tuple(scales[0]) != tuple(cfg.data.test_scale):
        raise SolovError(f"{cfg.source}: the demo needs one train scale equal to the test scale")
    long_side, short_side = max(scales[0]), min(scales[0])
    return short_side, long_side


def prediction_grid(predictor, ann_file: str, img_prefix: str, out_file: Path, n: int = 6, cols: int = 3,
                    zoom: int = 2) -> None:
    """The first `n` val images with their predicted masks (score >= 0.3), `zoom`-times enlarged so the captions
    stay readable on the small demo images, in a `cols`-wide grid."""
    from solov2.visualize import draw_instances
    with open(ann_file) as f:
        images = json.load(f)["images"][:n]
    tiles = []
    for info in images:
        img = cv2.imread(os.path.join(img_prefix, info["file_name"]))
        pred = predictor.predict(img)
        big = cv2.resize(img, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
        masks = np.array([cv2.resize(m.astype(np.uint8), big.shape[1::-1], interpolation=cv2.INTER_NEAREST)
                          for m in pred["masks"]], dtype=bool).reshape(-1, *big.shape[:2])
        tiles.append(draw_instances(big, masks, pred["labels"], pred["scores"], predictor.class_names))
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % cols)
    rows = [np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    write_image(out_file, np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 92])


def run(a: argparse.Namespace) -> dict:
    """The whole demo; returns the metrics dict also written to OUT/metrics.json."""
    t_start = time.time()
    check_flag_range("--seed", a.seed, 0, 2 ** 31 - 1)   # NumPy's and MindSpore's seed range
    out = Path(a.out)
    prepare_out(out, a.force)
    from solov2.engine.runtime import set_runtime
    set_runtime(a.device_target, a.mode, precision=a.precision)
    # imported after set_runtime: these build MindSpore cells
    from solov2.config import load_config
    from solov2.engine.train import train
    from solov2.evaluation.coco_eval import evaluate_results, load_coco, summary_line
    from solov2.evaluation.results import predict_dataset
    from solov2.files import write_json_atomic
    from solov2.inference import Predictor
    from solov2.tools.synthetic import CLASSES, generate, split_paths

    paths = split_paths(out / "data")
    cfg = load_config(a.config, data_overrides(paths) + list(a.cfg_options))
    cfg = dataclasses.replace(cfg, optim=with_epochs(cfg.optim, a.epochs))
    if tuple(cfg.class_names or ()) != CLASSES:
        raise SolovError(f"{a.config}: classes must be {CLASSES} (the synthetic dataset's categories)")
    h, w = image_size(cfg)
    num_train = a.num_train
    times = {}

    t = time.time()
    print(f"[1/4] generating {num_train} train + {a.num_val} val images ({w}x{h}) in {out / 'data'}", flush=True)
    generate(out / "data", num_train, a.num_val, seed=a.seed, h=h, w=w, class_colours=not a.random_colours)
    times["data"] = time.time() - t

    t = time.time()
    print(f"[2/4] training SOLOv2 light-R18 from scratch: {cfg.optim.total_epochs} epochs, batch "
          f"{cfg.data.imgs_per_gpu}, lr {cfg.optim.lr}, {a.mode} mode on {a.device_target}", flush=True)
    work = train(cfg, out / "work", seed=a.seed, mode=a.mode, keep_last=1)
    ckpt = work / f"epoch_{cfg.optim.total_epochs}.ckpt"
    times["train"] = time.time() - t

    t = time.time()
    print(f"[3/4] evaluating {ckpt.name} on the {a.num_val} val images", flush=True)
    predictor = Predictor(cfg, str(ckpt))
    coco = load_coco(paths["val_ann"])
    results = predict_dataset(predictor, coco, paths["val_img"])
    write_json_atomic(out / "results_val.json", results)
    metrics = evaluate_results(coco, results, ("segm", "bbox"))
    times["evaluate"] = time.time() - t

    t = time.time()
    print(f"[4/4] drawing predictions -> {out / 'predictions.jpg'}", flush=True)
    prediction_grid(predictor, paths["val_ann"], paths["val_img"], out / "predictions.jpg")
    times["picture"] = time.time() - t
    times["total"] = time.time() - t_start

    report = {t: {k: metrics[t][k] for k in ("AP", "AP50", "AP75", "stats", "per_class")} for t in metrics}
    report.update(
        time_s={k: round(v, 1) for k, v in times.items()},
        settings=dict(config=str(a.config), epochs=cfg.optim.total_epochs, num_train=num_train, num_val=a.num_val,
                      image_size=[w, h], class_colours=not a.random_colours, imgs_per_gpu=cfg.data.imgs_per_gpu,
                      lr=cfg.optim.lr, seed=a.seed, mode=a.mode, device_target=a.device_target,
                      checkpoint=str(ckpt)),
        # the machine is shared: the load says how comparable the times are
        load_average=[round(x, 2) for x in os.getloadavg()], cpu_count=os.cpu_count())
    write_json_atomic(out / "metrics.json", report)
    print(f"\ndemo done in {times['total']:.0f} s (data {times['data']:.0f} s, train {times['train']:.0f} s, "
          f"evaluate {times['evaluate']:.0f} s, picture {times['picture']:.0f} s)\n"
          f"val ({a.num_val} images): {summary_line(metrics)}\n"
          f"outputs: {out / 'predictions.jpg'}, {out / 'metrics.json'}, {out / 'results_val.json'}, {work}/")
    return report


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    cli_main(lambda: main(sys.argv[1:]))
