"""Inference benchmark: time per stage (backbone, neck, heads, post-processing) in GRAPH and PYNATIVE mode, and
achieved GFLOP/s against this machine's float32 matrix-multiply peak (measured here, not assumed).

    python -m solov2.tools.benchmark stages --configs configs/solov2/solov2_r101_fpn_8gpu_3x.py \
        configs/solov2/solov2_light_448_r18_fpn_8gpu_3x.py --repeat 3

Weights are random (speed does not depend on them); post-processing gets the network's real outputs.
The comparison with mmdetection (`python -m solov2.tools.benchmark peer ...`) is in `solov2.tools.benchmark_peer`,
the operator profile of an exported .onnx (`python -m solov2.tools.benchmark profile MODEL.onnx`) in
`solov2.tools.profile_exported`.
"""
import argparse
import dataclasses
import json
import time
from typing import Dict, List

import mindspore as ms
import mindspore.nn as nn
import numpy as np

from solov2.config import load_config
from solov2.data.transforms import rescale_size
from solov2.models.solov2 import SOLOv2Eval, build_model
from solov2.models.postprocess import get_seg_single
from solov2.engine.runtime import set_mode, set_runtime
from solov2.tools.profile_exported import gemm_rate, main as profile_main, square_matrices


def conv_flops(net, x) -> Dict[str, float]:
    """FLOPs (2 x multiply-adds) of every Conv2d per top-level stage, from output shapes seen in PyNative."""
    flops: Dict[str, float] = {}
    handles = []
    for name, cell in net.cells_and_names():
        if isinstance(cell, nn.Conv2d):
            stage = name.split(".")[0]

            def hook(c, inputs, output, stage=stage):
                k = c.kernel_size[0] * c.kernel_size[1] * c.in_channels // c.group
                flops[stage] = flops.get(stage, 0.0) + 2.0 * k * float(np.prod(output.shape))
            handles.append(cell.register_forward_hook(hook))
    net(x)
    for h in handles:
        h.remove()
    return flops


def matmul_peak(n: int = 2048, repeat: int = 5) -> Dict[str, float]:
    """Best float32 GEMM rate (GFLOP/s) of NumPy/BLAS and of MindSpore on n x n matrices."""
    a, b = square_matrices(n)
    ta, tb = ms.Tensor(a), ms.Tensor(b)
    return {"numpy": gemm_rate(lambda: a @ b, n, repeat),
            "mindspore": gemm_rate(lambda: ms.ops.matmul(ta, tb).asnumpy(), n, repeat)}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_config(path: str, mode: str, repeat: int) -> Dict:
    set_mode(mode)
    cfg = load_config(path)
    (h, w), _ = rescale_size(cfg.data.test_scale[1], cfg.data.test_scale[0], cfg.data.test_scale)
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, hp, wp)).astype(np.float32))
    net = build_model(cfg)
    net.set_train(False)
    full = SOLOv2Eval(net)
    res, inp = {}, x
    for name, stage in (("backbone", net.backbone), ("neck", net.neck), ("heads", _Heads(net))):
        t = time.perf_counter()
        out = _sync(stage(inp))            # the first call (GRAPH: with its compile) feeds the next stage
        first = time.perf_counter() - t
        times = [_timed(lambda: _sync(stage(inp))) for _ in range(repeat)]
        res[name] = dict(first_call_s=first, median_s=float(np.median(times)))
        inp = out
    cate, kern, mf = (t.asnumpy()[0] for t in full(x))
    # Random weights give almost no candidates; lower score_thr so the post-processing does real work
    # (about nms_pre candidates), which is the expensive case.
    test_cfg = dataclasses.replace(cfg.test, score_thr=float(np.sort(cate.ravel())[-cfg.test.nms_pre]) - 1e-7)
    times = [_timed(lambda: get_seg_single(cate, kern, mf, (h, w, 3), (h, w, 3), test_cfg,
                                           cfg.head.num_grids, cfg.head.strides)) for _ in range(repeat)]
    res["postprocess"] = dict(median_s=float(np.median(times)))
    if mode == "pynative":
        fl = conv_flops(net, x)
        res["gflop"] = {k: v / 1e9 for k, v in fl.items()}
    res["input"] = [hp, wp]
    return res


class _Heads(nn.Cell):
    """Both heads as one graph (the part after the neck)."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, feats):
        return self.net.bbox_head(feats), self.net.mask_feat_head(feats[0:4])


def _sync(out):
    """Force completion of every queued operator (PYNATIVE runs asynchronously), then read one output back."""
    ms.runtime.synchronize()
    first = out
    while isinstance(first, (tuple, list)):
        first = first[0]
    first.asnumpy()
    return out


def main(argv: List[str] = None) -> None:
    import sys
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["peer"] or argv[:1] == ["_predict"]:
        from solov2.tools.benchmark_peer import main as peer_main
        return peer_main(argv)
    if argv[:1] == ["profile"]:
        return profile_main(argv[1:])
    if argv[:1] == ["stages"]:
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="python -m solov2.tools.benchmark stages",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["configs/solov2/solov2_r101_fpn_8gpu_3x.py",
                                                     "configs/solov2/solov2_light_448_r18_fpn_8gpu_3x.py"])
    ap.add_argument("--modes", nargs="+", default=["pynative", "graph"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device_target", default="CPU")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    a = ap.parse_args(argv)
    set_runtime(a.device_target, a.modes[0])
    peak = matmul_peak()
    print(f"float32 matmul peak: numpy {peak['numpy']:.1f} GFLOP/s, mindspore {peak['mindspore']:.1f} GFLOP/s")
    best_peak = max(peak.values())
    report = {"matmul_peak_gflops": peak, "results": {}}
    for path in a.configs:
        gflop = None
        for mode in a.modes:
            r = bench_config(path, mode, a.repeat)
            gflop = r.get("gflop", gflop)
            report["results"][f"{path}:{mode}"] = r
            print(f"\n{path}  mode={mode}  input 1x3x{r['input'][0]}x{r['input'][1]}")
            for stage, key in [("backbone", "backbone"), ("neck", "neck"), ("heads", "heads")]:
                t = r[stage]["median_s"]
                g = None if gflop is None else (gflop.get(key, 0) if key != "heads" else
                                                gflop.get("bbox_head", 0) + gflop.get("mask_feat_head", 0))
                rate = "" if g is None else f"  {g:7.1f} GFLOP  {g / t:6.1f} GFLOP/s ({100 * g / t / best_peak:4.1f}% of peak)"
                print(f"  {stage:12s} {t * 1000:8.1f} ms (first call {r[stage]['first_call_s']:.1f} s){rate}")
            print(f"  {'postprocess':12s} {r['postprocess']['median_s'] * 1000:8.1f} ms (NumPy, ~nms_pre candidates)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    from solov2.cli.common import cli_main
    cli_main(main)   # a bad option or config value: one line, exit 2
