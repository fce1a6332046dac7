"""Where an exported .onnx network spends its time: per operator type in onnxruntime or OpenVINO, and the rate of its
convolutions and matrix products against this machine's float32 GEMM peak (NumPy/BLAS, measured here).

    python -m solov2.tools.benchmark profile r50_800x800.onnx [--runtime openvino] [--runs 3]

The input is random (speed does not depend on it) at the export's static size (its sidecar). If the convolutions
already run near the GEMM peak, a float32 network cannot get faster on this CPU without doing fewer operations.
"""
import argparse
import collections
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from solov2.deploy.sidecar import read_sidecar


def square_matrices(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Two seeded n x n float32 matrices (a GEMM rate's operands)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)


def gemm_rate(matmul, n: int, repeat: int = 5) -> float:
    """GFLOP/s of `matmul()`, an n x n x n float32 product: the best of `repeat` timed calls after a warm-up."""
    matmul()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def onnxruntime_profile(path: Path, x: np.ndarray, runs: int) -> Tuple[float, Dict[str, float], float]:
    """(median seconds per run, {op type: seconds per run}, conv + matmul GFLOP per run) from onnxruntime's own
    profiler, which records each node's kernel time and its input/output shapes."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"solov2_ort_profile_{path.stem}")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    session.run(None, feed)                       # warm-up: the trace holds it too; it is left out below
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    trace = Path(session.end_profiling())
    events = [e for e in json.loads(trace.read_text())
              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    trace.unlink()
    by_op: Dict[str, float] = collections.Counter()
    flop, seen = 0.0, set()
    for e in events:
        if e["name"] not in seen:   # each node's first event is the warm-up's
            seen.add(e["name"])
            continue
        op = e["args"]["op_name"]
        by_op[op] += e["dur"] * 1e-6 / runs
        flop += _gemm_flop(op, e["args"]) / runs
    return float(np.median(times)), dict(by_op), flop / 1e9


def _gemm_flop(op: str, args: dict) -> float:
    """2 x multiply-adds of a Conv or FusedConv (weight (Co, Ci/g, kh, kw), output (N, Co, Ho, Wo)) or a MatMul ((.., M, K) x
    (K, N)); 0 for other operators."""
    shapes = [list(s.values())[0] for s in args.get("input_type_shape", [])]
    out = [list(s.values())[0] for s in args.get("output_type_shape", [])]
    if op in ("Conv", "FusedConv") and len(shapes) > 1 and out:
        return 2.0 * float(np.prod(out[0])) * float(np.prod(shapes[1][1:]))
    if op in ("MatMul", "Gemm") and len(shapes) > 1 and out:
        return 2.0 * float(np.prod(out[0])) * float(shapes[0][-1])
    return 0.0


def openvino_profile(path: Path, x: np.ndarray, runs: int) -> Tuple[float, Dict[str, float], float]:
    """(median seconds per run, {layer type: seconds per run}, nan) from OpenVINO's performance counters (they give
    no shapes, so no GFLOP), compiled as `solov2.deploy.runtimes.openvino_runner` compiles it."""
    from solov2.deploy.runtimes import openvino_compiled
    compiled = openvino_compiled(path, PERF_COUNT=True)
    request = compiled.create_infer_request()
    request.infer({0: x})
    times, by_op = [], collections.Counter()
    for _ in range(runs):
        t = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - t)
        for info in request.get_profiling_info():
            by_op[info.node_type] += info.real_time.total_seconds() / runs
    return float(np.median(times)), dict(by_op), float("nan")


def main(argv: List[str]) -> None:
    """`python -m solov2.tools.benchmark profile ...` (argv without 'profile'): prints the profile."""
    ap = argparse.ArgumentParser(prog="python -m solov2.tools.benchmark profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="an .onnx written by export.py (its .json sidecar beside it)")
    ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=12, help="operator types to list")
    a = ap.parse_args(argv)
    spec = read_sidecar(a.model)
    if spec.model_format != "ONNX":
        ap.error(f"{a.model}: not an exported .onnx (its sidecar says {spec.model_format})")
    h, w = spec.input_hw
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    from solov2.cpu import cpu_kind
    peak = gemm_rate(lambda m=square_matrices(2048): m[0] @ m[1], 2048)
    run = onnxruntime_profile if a.runtime == "onnxruntime" else openvino_profile
    median, by_op, gflop = run(a.model, x, a.runs)
    total = sum(by_op.values())
    print(f"{a.model.name} in {a.runtime}, input 1x3x{h}x{w}, CPU {cpu_kind()}: {median:.3f} s per run "
          f"(median of {a.runs}); operators sum to {total:.3f} s")
    for op, s in sorted(by_op.items(), key=lambda kv: -kv[1])[:a.top]:
        print(f"  {op:24s} {s * 1000:9.1f} ms  {100 * s / total:5.1f}%")
    gemm = sum(by_op.get(op, 0.0) for op in ("Conv", "FusedConv", "MatMul", "Gemm"))
    if np.isfinite(gflop) and gemm > 0:
        print(f"convolutions + matrix products: {gflop:.1f} GFLOP in {gemm:.3f} s = {gflop / gemm:.0f} GFLOP/s; "
              f"this machine's float32 GEMM peak (NumPy/BLAS, 2048x2048): {peak:.0f} GFLOP/s "
              f"({100 * gflop / gemm / peak:.0f}%)")
