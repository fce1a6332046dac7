"""Speed against the peer, mmdetection 3.3 SOLOv2 on the same CPU, timed alternately in one run.

    python -m solov2.tools.benchmark peer --image IMG --ann ANN.json --img-prefix DIR [--peer-python ../mmpeer/bin/python \\
        --peer-script ../shared/peers/mmdet_speed.py] [--rounds 2] [--json out.json]

Rows: R50 and R101 predict at the official test scale (IMG, keep-ratio into 1333x800) and on an 800x800 copy of
IMG; the light-R18 train step on real batches of 2 x 448 x 768 (ANN / DIR). Every measurement is a fresh
process (ours: GRAPH mode; the peer: its own venv), ours and the peer's in turn, `--rounds` times; the table shows
medians over all timed runs and ratio = ours / peer. Weights are random on both sides (mmdet's init and ours), so
post-processing sees few candidates: compare `network` first. Run nothing else at the same time. --exported adds,
per predict row, our exported model (the same random weights, export.py): a dynamic MindIR and a static ONNX of the
row's input size, the ONNX in onnxruntime and in OpenVINO, each a fresh process in the same alternation.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[3]
CONFIGS = {"r50": "configs/solov2/solov2_r50_fpn_8gpu_3x.py", "r101": "configs/solov2/solov2_r101_fpn_8gpu_3x.py",
           "light_r18": "configs/solov2/solov2_light_448_r18_fpn_8gpu_3x_trashcan.py"}


def predict_once(arch: str, image: str, runs: int, model: Optional[str] = None, runtime: str = "onnxruntime") -> dict:
    """This process: our predict (GRAPH mode, random weights) on one image, natively or with the exported `model`
    (run by `runtime` when it is an .onnx); medians of network / whole predict."""
    import cv2
    import numpy as np
    from solov2.config import load_config
    from solov2.deploy.exported import ExportedPredictor
    from solov2.inference import Predictor
    from solov2.overlap import predict_timed
    from solov2.engine.runtime import set_runtime
    set_runtime("CPU", "graph")
    pred = (ExportedPredictor(model, runtime=runtime) if model
            else Predictor(load_config(str(REPO / CONFIGS[arch]))))
    img = cv2.imread(image)
    net_s, predict_s = [], []
    t = time.perf_counter()
    out = pred.predict(img)  # warm-up: includes the one graph compile
    first = time.perf_counter() - t
    for _ in range(runs):
        t = time.perf_counter()
        out, stages = predict_timed(pred, img)
        predict_s.append(time.perf_counter() - t)
        net_s.append(stages["network"])
    x, _ = pred.prepare(img)
    return dict(arch=arch, input=list(x.shape), instances=int(len(out["scores"])), first_s=round(first, 2),
                net_runs=[round(v, 4) for v in net_s], predict_runs=[round(v, 4) for v in predict_s],
                net_median_s=float(np.median(net_s)), predict_median_s=float(np.median(predict_s)))


def _json_line(cmd: List[str], what: str) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"{what} failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ours_predict(arch: str, image: str, runs: int, model: Optional[str] = None, runtime: str = "onnxruntime") -> dict:
    extra = ["--model", model, "--runtime", runtime] if model else []
    return _json_line([sys.executable, "-m", "solov2.tools.benchmark", "_predict", "--arch", arch, "--image", image,
                       "--runs", str(runs), *extra], f"our {arch} predict {model or ''} {runtime if model else ''}")


def export_models(arch: str, sizes: Dict[str, tuple], folder: str) -> Dict[str, Dict[str, str]]:
    """Random weights of `arch` (MindSpore's init, as `predict_once`'s native rows) saved and exported with
    export.py: one dynamic MindIR for every size, one static ONNX per size. Returns {label: {variant: file}}."""
    ckpt = os.path.join(folder, f"{arch}.ckpt")
    code = ("import sys, mindspore as ms; from solov2.config import load_config; "
            "from solov2.models.solov2 import build_model;"
            "ms.save_checkpoint(build_model(load_config(sys.argv[1])), sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(REPO / CONFIGS[arch]), ckpt], check=True, cwd=REPO,
                   capture_output=True)

    def export(fmt: str, out: str, size=None) -> str:
        cmd = [sys.executable, "export.py", str(REPO / CONFIGS[arch]), ckpt, "--format", fmt, "--out", out,
               *(["--input-size", str(size[0]), str(size[1])] if size else [])]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0:
            raise SystemExit(f"export of {arch} to {fmt} failed:\n{r.stderr[-3000:]}")
        print(f"  export.py {arch} {fmt} {size or 'dynamic'}: {time.perf_counter() - t:.0f} s (with its check), "
              f"{os.path.getsize(out) / 2**20:.0f} MiB; {r.stdout.strip().splitlines()[-1]}", flush=True)
        return out

    mindir = export("MINDIR", os.path.join(folder, f"{arch}.mindir"))
    files = {}
    for label, size in sizes.items():
        onnx = export("ONNX", os.path.join(folder, f"{arch}_{size[0]}x{size[1]}.onnx"), size)
        files[label] = {"MindIR": mindir, "onnxruntime": onnx, "OpenVINO": onnx}
    return files


def ours_train(a) -> dict:
    cmd = [sys.executable, "-m", "solov2.tools.benchmark_train", "_one", "--mode", "graph", "--config",
           str(REPO / CONFIGS["light_r18"]), "--ann", a.ann, "--img-prefix", a.img_prefix, "--iters", str(a.iters),
           "--scale", "(768,448)"]
    return _json_line(cmd, "our train step")


def peer_predict(a, arch: str, image: str) -> dict:
    return _json_line([a.peer_python, a.peer_script, "predict", "--arch", arch, "--image", image,
                       "--runs", str(a.runs)], f"peer {arch} predict")


def peer_train(a) -> dict:
    return _json_line([a.peer_python, a.peer_script, "train", "--arch", "light_r18", "--ann", a.ann,
                       "--img-prefix", a.img_prefix, "--scale", "768", "448", "--iters", str(a.iters)],
                      "peer train step")


def padded_input(arch: str, image: str) -> tuple:
    """(H, W) of our preprocessed input of `image` (test scale, padded to size_divisor)."""
    import cv2
    from solov2.config import load_config
    from solov2.data.transforms import preprocess_test
    d = load_config(str(REPO / CONFIGS[arch])).data
    x, _ = preprocess_test(cv2.imread(image), d.test_scale, d.mean, d.std, d.to_rgb, d.size_divisor)
    return tuple(x.shape[2:])


def square_copy(image: str, side: int, folder: str) -> str:
    import cv2
    path = os.path.join(folder, f"square_{side}.jpg")
    cv2.imwrite(path, cv2.resize(cv2.imread(image), (side, side), interpolation=cv2.INTER_LINEAR))
    return path


def _median(rows: List[dict], key: str) -> float:
    return statistics.median(v for r in rows for v in r[key])


def compare(a) -> Dict[str, dict]:
    """Alternate ours and the peer's for every row; returns {row: {ours: [...], peer: [...]}}."""
    rows: Dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = {"test scale": a.image, "800x800": square_copy(a.image, 800, tmp)}
        for arch in a.archs:
            exported = {}
            if a.exported:   # the padded input sizes of the two images, for the static ONNX files
                sizes = {label: padded_input(arch, img) for label, img in images.items()}
                exported = export_models(arch, sizes, tmp)
            for label, img in images.items():
                row = rows.setdefault(f"{arch} predict, {label}", dict(ours=[], peer=[]))
                variants = exported.get(label, {})
                for v in variants:
                    row[v] = []
                for k in range(a.rounds):
                    row["ours"].append(ours_predict(arch, img, a.runs))
                    for v, model in variants.items():
                        try:   # a runtime that crashes (OpenVINO 2026.4 at 800x800 here) loses its row, not the run
                            row[v].append(ours_predict(arch, img, a.runs, model,
                                                       runtime="openvino" if v == "OpenVINO" else "onnxruntime"))
                        except SystemExit as e:
                            print(f"  {v} failed: {str(e).splitlines()[0]}", flush=True)
                    if a.peer_python:
                        row["peer"].append(peer_predict(a, arch, img))
                    print(f"  {arch} {label} round {k + 1}: network "
                          + ", ".join(f"{v} {row[v][-1]['net_median_s']:.2f} s" for v in ["ours", *variants]
                                      + (["peer"] if a.peer_python else []) if row[v]), flush=True)
        if a.ann:
            row = rows.setdefault("light_r18 train step, 2x448x768", dict(ours=[], peer=[]))
            for k in range(a.rounds):
                row["ours"].append(ours_train(a))
                if a.peer_python:
                    row["peer"].append(peer_train(a))
                print(f"  train round {k + 1}: ours {row['ours'][-1]['median_step_s']:.2f} s"
                      + (f", peer {row['peer'][-1]['median_step_s']:.2f} s" if a.peer_python else ""), flush=True)
    return rows


def table(rows: Dict[str, dict]) -> str:
    """Markdown table: per row the medians of ours (native, and each exported variant measured) and the peer's, and
    the ratio to the peer."""
    out = ["| row | figure | ours | peer | ours / peer |", "|---|---|---|---|---|"]

    def line(name, figure, ours: float, peer: Optional[float], unit: str):
        ratio = f"{ours / peer:.2f}x" if peer else "-"
        peer_s = f"{peer:.2f} {unit}" if peer else "-"
        out.append(f"| {name} | {figure} | {ours:.2f} {unit} | {peer_s} | {ratio} |")

    for name, r in rows.items():
        o, p = r["ours"], r["peer"]
        for v in (k for k in r if k not in ("ours", "peer") and r[k]):
            for figure, key in (("network", "net_runs"), ("whole predict", "predict_runs")):
                line(f"{name} ({v})", figure, _median(r[v], key), _median(p, key) if p else None, "s")
        if "train" in name:
            line(name, "median step", statistics.median(x["median_step_s"] for x in o),
                 statistics.median(x["median_step_s"] for x in p) if p else None, "s")
            # ru_maxrss is in KiB: ours is stored in MiB, the peer script's "GB" is KiB / 1e6; compare in the latter
            line(name, "peak RSS", max(x["peak_rss_mb"] for x in o) * 1024 / 1e6,
                 max(x["peak_rss_gb"] for x in p) if p else None, "GB")
        else:
            line(name, "network", _median(o, "net_runs"), _median(p, "net_runs") if p else None, "s")
            line(name, "whole predict", _median(o, "predict_runs"), _median(p, "predict_runs") if p else None, "s")
    return "\n".join(out)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_predict"]:
        ap = argparse.ArgumentParser()
        ap.add_argument("--arch", required=True, choices=sorted(CONFIGS))
        ap.add_argument("--image", required=True)
        ap.add_argument("--runs", type=int, default=5)
        ap.add_argument("--model")
        ap.add_argument("--runtime", default="onnxruntime")
        a = ap.parse_args(argv[1:])
        print(json.dumps(predict_once(a.arch, a.image, a.runs, a.model, a.runtime)))
        return
    ap = argparse.ArgumentParser(prog="python -m solov2.tools.benchmark peer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", required=True, help="a photo; the test-scale rows resize it into 1333x800")
    ap.add_argument("--ann", help="COCO annotations for the train-step row (e.g. trashcan_mini train)")
    ap.add_argument("--img-prefix", help="image folder of --ann")
    ap.add_argument("--peer-python", help="python of the mmdetection venv (without it: our times only)")
    ap.add_argument("--peer-script", default=str(REPO.parent / "shared" / "peers" / "mmdet_speed.py"))
    ap.add_argument("--archs", nargs="+", default=["r50", "r101"], choices=["r50", "r101"])
    ap.add_argument("--rounds", type=int, default=1, help="ours/peer alternations per row")
    ap.add_argument("--runs", type=int, default=5, help="timed predicts per process, after one warm-up")
    ap.add_argument("--iters", type=int, default=8, help="train steps per process (the first two are not timed)")
    ap.add_argument("--exported", action="store_true",
                    help="also time the exported model: MindIR (dynamic), ONNX in onnxruntime and in OpenVINO")
    ap.add_argument("--json", help="also write every measurement here")
    a = ap.parse_args(argv[1:])
    if bool(a.ann) != bool(a.img_prefix):
        raise SystemExit("error: --ann and --img-prefix go together")
    # the processes it starts run in the repository: the user's relative paths are made absolute first
    for key in ("image", "ann", "img_prefix", "peer_script", "json"):
        if getattr(a, key):
            setattr(a, key, str(Path(getattr(a, key)).absolute()))
    if a.peer_python and os.sep in a.peer_python:   # a path, not a command found on PATH
        a.peer_python = str(Path(a.peer_python).absolute())
    from solov2.cpu import cpu_kind
    print(f"CPU: {cpu_kind()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = compare(a)
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(dict(cpu=cpu_kind(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
