"""Training benchmark: train-step time in GRAPH vs PYNATIVE mode and per amp level (images/s, peak host memory),
data-parallel throughput with 1 and 2 msrun workers (scaling efficiency), and the train loader alone.

    python -m solov2.tools.benchmark_train step --config CFG --ann ANN.json --img-prefix DIR [--iters 8] [--amps O0 O2]
    python -m solov2.tools.benchmark_train scaling --config CFG --ann ANN.json --img-prefix DIR [--workers 1 2]
    python -m solov2.tools.benchmark_train loader --config CFG --ann ANN.json --img-prefix DIR [--workers 1 2]

Step mode runs each (execution mode, amp level) in its own process (peak memory = ru_maxrss of that process).
Times exclude the first two steps (graph compilation, warm-up); the batches are the real data pipeline's.
Loader mode runs the config's own train pipeline (multi-scale, flip, targets for every level), with no model.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]


def _overrides(a, images: int):
    return [f"data.train.ann_file={a.ann}", f"data.train.img_prefix={a.img_prefix}", f"data.train.max_images={images}",
            f"data.imgs_per_gpu={a.imgs_per_gpu}", f"data.train.pipeline.Resize.img_scale=[{a.scale}]",
            "data.train.pipeline.RandomFlip.flip_ratio=0.0", "log_config.interval=1"] + list(a.cfg_options)


def one_mode(a) -> dict:
    """Time train steps in this process (mode a.mode) on the first a.iters batches of epoch 0."""
    from solov2.config import load_config
    from solov2.data.coco import CocoDataset
    from solov2.data.loader import TrainLoader
    from solov2.models.solov2 import build_model
    from solov2.engine.runtime import set_runtime
    from solov2.engine.optim import make_optimizer
    from solov2.engine.train_step import make_train_step, to_tensors
    from solov2.engine.amp import make_loss_scaler, mixed_precision
    set_runtime(a.device_target, a.mode, precision="fast")
    cfg = load_config(a.config, _overrides(a, 10 ** 6) + [f"amp_level={a.amp}"])
    ds = CocoDataset(cfg.data.train_ann_file, cfg.data.train_img_prefix)
    loader = TrainLoader(ds, cfg, seed=0, workers=1)
    batches = []
    for b in loader.epoch(0):
        batches.append(b)
        if len(batches) == a.iters:
            break
    net = build_model(cfg)
    net.set_train(True)
    opt = make_optimizer(net, cfg.optim, len(loader), 1)
    step = make_train_step(mixed_precision(net, cfg.amp.level), opt, head=cfg.head, grad_clip=cfg.optim.grad_clip,
                           world=1, jit=a.mode == "graph", scaler=make_loss_scaler(cfg.amp))
    times, shapes = [], set()
    for b in batches:
        shapes.add((b["img"].shape, b["pos_mask"].shape))
        t = time.perf_counter()
        float(step(*to_tensors(b))[0].asnumpy())
        times.append(time.perf_counter() - t)
    steady = times[2:] if len(times) > 2 else times
    sec = float(np.median(steady))
    return dict(mode=a.mode, amp=a.amp, first_steps_s=[round(x, 2) for x in times[:2]], median_step_s=sec,
                images_per_s=a.imgs_per_gpu / sec, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                distinct_shapes=len(shapes), batch=list(batches[0]["img"].shape))


def step_bench(a) -> list:
    out = []
    for mode in a.modes:
        for amp in a.amps:
            cmd = [sys.executable, "-m", "solov2.tools.benchmark_train", "_one", "--mode", mode, "--amp", amp]
            r = subprocess.run(cmd + _common_argv(a), capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"benchmark in {mode} mode, amp {amp} failed:\n{r.stderr[-3000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            out.append(res)
            print(f"{mode:9s} {amp} step {res['median_step_s']:.2f} s (first two {res['first_steps_s']}), "
                  f"{res['images_per_s']:.2f} img/s, peak RSS {res['peak_rss_mb']:.0f} MB, batch {res['batch']}")
    return out


def loader_bench(a) -> list:
    """Images/s of the train loader alone (the config's pipeline) with 1, 2, ... threads, and images per
    CPU-second (the per-core rate: what one host core feeding a card delivers)."""
    from solov2.config import load_config
    from solov2.data.coco import CocoDataset
    from solov2.data.loader import TrainLoader
    cfg = load_config(a.config, [f"data.train.ann_file={a.ann}", f"data.train.img_prefix={a.img_prefix}",
                                 f"data.imgs_per_gpu={a.imgs_per_gpu}"] + list(a.cfg_options))
    ds = CocoDataset(cfg.data.train_ann_file, cfg.data.train_img_prefix)
    out = []
    for w in a.workers:
        loader = TrainLoader(ds, cfg, seed=0, workers=w)
        rates = []
        for epoch in range(a.epochs + 1):           # epoch 0 warms the file cache and the imports up
            t, cpu, n = time.perf_counter(), time.process_time(), 0
            for b in loader.epoch(epoch):
                n += b["img"].shape[0]
            rates.append((n / (time.perf_counter() - t), n / (time.process_time() - cpu)))
        wall, per_cpu = (float(np.median([r[k] for r in rates[1:]])) for k in (0, 1))
        res = dict(threads=w, images_per_epoch=n, epochs=a.epochs, images_per_s=wall, images_per_cpu_s=per_cpu)
        out.append(res)
        print(f"{w} thread(s): {wall:.1f} img/s, {per_cpu:.1f} img per CPU-second (median of {a.epochs} epochs of "
              f"{n} images)")
    return out


def scaling_bench(a) -> list:
    """train_multi.py under msrun_launcher.sh with 1 and 2 workers; s/it from log.json after warm-up."""
    out = []
    for n in a.workers:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / "work"
            over = " ".join(_overrides(a, n * a.imgs_per_gpu * a.iters) + ["total_epochs=1"])
            cmd = f"train_multi.py --config {a.config} --work-dir {work} --seed 0 --cfg-options {over}"
            port = str(20000 + os.getpid() % 20000 + n)
            t = time.time()
            r = subprocess.run(["bash", str(REPO / "msrun_launcher.sh"), cmd, str(n), str(n), "127.0.0.1", port, "0",
                                str(Path(tmp) / "logs"), "True", "300"], cwd=REPO, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"{n}-worker run failed:\n{(r.stdout + r.stderr)[-3000:]}")
            rows = [json.loads(s) for s in (work / "log.json").read_text().splitlines()]
            sec = float(np.median([row["time"] for row in rows[2:]] or [rows[-1]["time"]]))
            res = dict(workers=n, median_iter_s=sec, images_per_s=n * a.imgs_per_gpu / sec, wall_s=time.time() - t)
            out.append(res)
            eff = "" if not out or out[0]["workers"] != 1 else \
                f", scaling efficiency {res['images_per_s'] / (n * out[0]['images_per_s']):.0%}"
            print(f"{n} worker(s): {sec:.2f} s/iteration, {res['images_per_s']:.2f} img/s{eff}")
    return out


def _common_argv(a):
    argv = ["--config", str(a.config), "--ann", str(a.ann), "--img-prefix", str(a.img_prefix), "--iters", str(a.iters),
            "--imgs-per-gpu", str(a.imgs_per_gpu), "--scale", a.scale, "--device_target", a.device_target]
    return argv + (["--cfg-options", *a.cfg_options] if a.cfg_options else [])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["step", "scaling", "loader", "_one"])
    ap.add_argument("--config", default=str(REPO / "configs/solov2/solov2_light_448_r18_fpn_8gpu_3x_trashcan.py"))
    ap.add_argument("--ann", required=True)
    ap.add_argument("--img-prefix", required=True)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--imgs-per-gpu", type=int, default=2)
    ap.add_argument("--scale", default="(768,448)", help="single train scale (long,short)")
    ap.add_argument("--modes", nargs="+", default=["graph", "pynative"])
    ap.add_argument("--mode", default="graph")
    ap.add_argument("--amps", nargs="+", default=["O0"], choices=["O0", "O1", "O2", "O3"])
    ap.add_argument("--amp", default="O0")
    ap.add_argument("--epochs", type=int, default=3, help="loader: timed epochs after a warm-up one (median)")
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--device_target", default="CPU")
    ap.add_argument("--cfg-options", nargs="*", default=[])
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.iters < 3:   # the first two steps (compile, warm-up) are never in the median
        ap.error("--iters must be >= 3")
    # the workers msrun starts run in the repository: the user's relative paths are made absolute first
    a.config, a.ann, a.img_prefix = (str(Path(v).absolute()) for v in (a.config, a.ann, a.img_prefix))
    if a.what == "_one":
        print(json.dumps(one_mode(a)))
        return
    if a.what == "step":
        res = step_bench(a)
    elif a.what == "scaling":
        res = scaling_bench(a)
    else:
        if a.epochs < 1:
            ap.error("--epochs must be >= 1")
        res = loader_bench(a)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    from solov2.cli.common import cli_main
    cli_main(main)   # a bad option or config value: one line, exit 2
