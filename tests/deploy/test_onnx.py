"""ONNX export (export.py --format ONNX) and the .onnx model in onnxruntime and OpenVINO behind --model.

Three models, exported through the CLI (static sizes: the ONNX graph is the portable formulation, whose resize
matrices, coordinates and DCN sampling grids are constants of one input size):
- light-R18 TrashCan, reference weights (100 instances per image), at its padded test scale 448x768;
- R50 (SOLOv2Head), random weights, its test scale set to 768x448 (--cfg-options; input 448x768, for time);
- light-512-DCN-R50 (DCNv1), random weights, at its padded test scale 512x864.
The exported network must equal the native one on a real image (onnxruntime 1e-5 relative, OpenVINO 1e-4: it may
fuse and reorder), and run.py / valuation.py --model must give the native instances and AP. OpenVINO tests skip
where it is not installed; `pip install -e ".[dev]"` (CI) installs it.
"""
import importlib.util
import json
import os
import re
import shutil

import cv2
import pytest
from conftest import (DCN_CFG, R50_CFG, TRASHCAN_CFG, VAL_ANN, assert_bad_input, cli, cli_probing_imports,
                      match_instances, near_decided)
from deploy_common import IMAGES, R50_SCALE, assert_valuation_gives_native_ap, edit_sidecar

from solov2.config import load_config
from solov2.deploy.export import pre_nms_scores, relative_differences
from solov2.deploy.exported import ExportedPredictor

RUNTIMES = [pytest.param("onnxruntime"),
            pytest.param("openvino", marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                                               reason="openvino not installed: pip install -e '.[openvino]'"))]
TOLERANCE = {"onnxruntime": 1e-5, "openvino": 1e-4}


# name -> (config, --cfg-options, export.py flags): R18 exports in the default GRAPH mode, R50 and DCN in PYNATIVE
# mode. R18 and DCN run export.py's own check against the native network (the dense and the deformable ONNX graph:
# a check that refused a correct export would show); R50 passes --no-check: it has no operator that R18 and DCN
# lack, and test_onnx_network_equals_native compares its outputs with the native network on a real image anyway
MODELS = {"r18": (TRASHCAN_CFG, [], []), "r50": (R50_CFG, [R50_SCALE], ["--mode", "pynative", "--no-check"]),
          "dcn": (DCN_CFG, [], ["--mode", "pynative"])}


@pytest.fixture(scope="module")
def onnx_models(ckpt, r50_ckpt, dcn_ckpt, tmp_path_factory):
    """name -> (loaded config, checkpoint, .onnx, export.py stdout), exported once per module."""
    d = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, weights in (("r18", ckpt), ("r50", r50_ckpt), ("dcn", dcn_ckpt)):
        cfg, overrides, flags = MODELS[name]
        model = d / f"{name}.onnx"
        r = cli("export.py", cfg, weights, "--format", "onnx", "--out", model, *flags,
                *(["--cfg-options", *overrides] if overrides else []), timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = (load_config(cfg, overrides), weights, model, r.stdout)
    return out


def test_onnx_export_is_static_and_checked(onnx_models):
    for name, shape in (("r18", [1, 3, 448, 768]), ("r50", [1, 3, 448, 768]), ("dcn", [1, 3, 512, 864])):
        _, _, model, stdout = onnx_models[name]
        side = json.loads((model.parent / (model.name + ".json")).read_text())
        assert side["model_format"] == "ONNX" and side["input"]["shape"] == shape, name
        assert ("checked against the native network" in stdout) == ("--no-check" not in MODELS[name][2]), stdout


@pytest.fixture(scope="module")
def native_outputs(onnx_models, native_predictor):
    """(name, mode) -> (x: the 480x270 image in the export's input, native outputs, pre-points-NMS scores, config),
    computed once for both runtimes."""
    done = {}

    def get(name, mode):
        if (name, mode) not in done:
            cfg, weights, model, _ = onnx_models[name]
            native = native_predictor(MODELS[name][0], weights, MODELS[name][1])
            x, _ = ExportedPredictor(model).prepare(cv2.imread(str(IMAGES[0])))
            done[name, mode] = (x, native.network(x), pre_nms_scores(native.net.net, x), cfg)
        return done[name, mode]
    return get


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", ["r18", "r50", "dcn"])
def test_onnx_network_equals_native(onnx_models, native_outputs, ms_mode, name, runtime):
    """A real image (480x270, padded into the export size): the three outputs within TOLERANCE[runtime] of the
    native network's (relative to each output's largest value); cells that points-NMS keeps in only one of the two
    must either tie with a neighbour to the tolerance or score below score_thr, where post-processing drops them."""
    x, outputs, pre_nms, cfg = native_outputs(name, ms_mode)
    d = relative_differences(outputs, ExportedPredictor(onnx_models[name][2], runtime=runtime).network(x),
                             cfg.head.num_grids, pre_nms)
    print(f"\n{name} {runtime} vs native {ms_mode}: {d}")
    assert max(d["cate_scores"], d["kernels"], d["mask_feat"]) <= TOLERANCE[runtime], d
    assert d["nms_flip_score"] < cfg.test.score_thr, d


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_run_py_onnx_gives_the_native_instances(onnx_models, native_predictor, tmp_path, runtime):
    """run.py --model r18.onnx (no config) on the 480x270 image, whose native padded input is the export size:
    the native instances (IoU >= 0.999, scores within 1e-4 after the near-threshold rule of tests/conftest.py: the
    native post-processing with its near-threshold mask pixels decided by the exported network). MindSpore is
    not imported: an .onnx runs without it."""
    cfg, weights, model, _ = onnx_models["r18"]
    r = cli_probing_imports("run.py", "--model", model, IMAGES[0], "--out", tmp_path / "out", "--runtime", runtime)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mindspore imported: False" in r.stderr, r.stderr[-3000:]
    got = json.loads((tmp_path / "out" / "results.json").read_text())
    native, exp = native_predictor(TRASHCAN_CFG, weights), ExportedPredictor(model, runtime=runtime)
    img = cv2.imread(str(IMAGES[0]))
    x, meta = native.prepare(img)
    assert x.shape[2:] == (448, 768)
    outputs = native.network(x)
    head = native.cfg.head
    expected = near_decided(outputs, exp.network(x)[1:], meta, native.cfg.test, head.num_grids, head.strides)
    assert len(got) == 100
    match_instances(expected, got)


def test_a_missing_onnxruntime_is_one_line_naming_the_install(onnx_models, tmp_path):
    """Without onnxruntime (an onnxruntime package that fails to import, first on the path): run.py --model x.onnx
    and an ONNX export (whose check runs in onnxruntime) stop at once with one line naming the install command."""
    fake = tmp_path / "without" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named onnxruntime')\n")
    env = dict(os.environ, PYTHONPATH=str(fake.parent))
    _, weights, model, _ = onnx_models["r18"]
    work = tmp_path / "work"
    work.mkdir()
    assert_bad_input(["run.py", "--model", model, IMAGES[0], "--out", work / "out"], work,
                     ["r18.onnx", "needs onnxruntime", "pip install -e '.[onnx]'"], env=env)
    assert_bad_input(["export.py", TRASHCAN_CFG, weights, "--format", "onnx", "--out", work / "m.onnx"], work,
                     ["--format ONNX", "pip install -e '.[onnx]'", "--no-check"], env=env)


def test_an_onnxruntime_failure_is_one_error_naming_the_model(onnx_models):
    """onnxruntime's own exception types derive from Exception only (not RuntimeError): a failed run (here a
    float64 input; out of memory in practice) is a SolovError naming the model, not a traceback."""
    import numpy as np

    from solov2.deploy.runtimes import onnxruntime_runner
    from solov2.errors import SolovError
    model = onnx_models["r18"][2]
    run = onnxruntime_runner(model, (448, 768))
    with pytest.raises(SolovError, match=r"r18\.onnx: onnxruntime failed to run it \("):
        run(np.zeros((1, 3, 448, 768), np.float64))
    assert [o.shape for o in run(np.zeros((1, 3, 448, 768), np.float32))][2] == (1, 128, 112, 192)


def test_an_onnx_sidecar_without_one_static_size_is_one_line(onnx_models, tmp_path):
    """An .onnx whose sidecar was edited to the dynamic MindIR's input [-1, 3, -1, -1] (the ONNX graph holds
    constants of one size): one line naming the sidecar, not a TypeError from the runner."""
    model = tmp_path / "r18.onnx"
    shutil.copy(onnx_models["r18"][2], model)
    shutil.copy(onnx_models["r18"][2].parent / "r18.onnx.json", tmp_path / "r18.onnx.json")
    edit_sidecar(model, input=dict(json.loads((tmp_path / "r18.onnx.json").read_text())["input"],
                                   shape=[-1, 3, -1, -1]))
    assert_bad_input(["run.py", "--model", model, IMAGES[0], "--out", tmp_path / "out"], tmp_path,
                     ["r18.onnx.json", "an ONNX export has one static input size"])


def test_valuation_onnx_gives_the_native_ap(onnx_models, native_val_results, tmp_path):
    """valuation.py --model r18.onnx gives the AP of the native model to 1e-4, scored against the native instances
    of score >= 0.3 (see `pseudo_ground_truth`) on 12 val images that are all 480x270 (native padding = export
    size)."""
    gt = json.loads(VAL_ANN.read_text())
    assert all((i["height"], i["width"]) == (270, 480) for i in gt["images"][:12])
    assert_valuation_gives_native_ap(onnx_models["r18"][2], native_val_results, tmp_path)


def test_points_nms_flips_count_as_ties_only_beside_an_equal_neighbour():
    """relative_differences: a cell kept in only one network is a near-tie when its top, left or top-left
    neighbour scored within the check tolerance of it before points-NMS; otherwise its score is reported (and
    fails the export check above score_thr)."""
    import numpy as np
    kernels, mask_feat = np.ones((1, 4, 2), np.float32), np.ones((1, 2, 4, 4), np.float32)

    def diffs(pre, native_cells, exported_cells):     # one 2x2 level, one class: {cell index: kept score}
        cate = [np.zeros((1, 4, 1), np.float32) for _ in range(2)]
        for c, cells in zip(cate, (native_cells, exported_cells)):
            for k, v in cells.items():
                c[0, k, 0] = v
        return relative_differences([cate[0], kernels, mask_feat], [cate[1], kernels, mask_feat], num_grids=[2],
                                    pre_nms=np.array(pre, np.float32).reshape(4, 1))

    # cell 1 ties with its left neighbour (cell 0): kept natively, suppressed by 0.5 + 1e-7 in the export
    d = diffs([0.5, 0.5, 0.1, 0.1], {0: 0.5, 1: 0.5}, {0: 0.5 + 1e-7})
    assert (d["nms_flips"], d["nms_near_ties"], d["nms_flip_score"]) == (1, 1, 0.0), d
    d = diffs([0.5, 0.6, 0.1, 0.1], {0: 0.5, 1: 0.6}, {0: 0.5})   # lost without a tie: a real difference
    assert (d["nms_flips"], d["nms_near_ties"]) == (1, 0) and d["nms_flip_score"] == pytest.approx(0.6), d


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_openvino_compiles_without_the_onednn_cap_and_infers_once(onnx_models, monkeypatch):
    """OpenVINO's own oneDNN reads ONEDNN_MAX_CPU_ISA, the variable that caps MindSpore's at AVX2: capped, OpenVINO
    crashed (exit -11) at 800x800 on an AMD EPYC Zen 4. The runner compiles without it and puts it back for
    MindSpore. And one network call is one inference (reading the three outputs once each from it had run the
    network three times: R50 800x800 5.3 s instead of 1.8 s)."""
    import openvino as ov
    seen, infers = [], []
    compile_model, infer = ov.Core.compile_model, ov.InferRequest.infer

    def spy_compile(self, *args, **kwargs):
        seen.append(os.environ.get("ONEDNN_MAX_CPU_ISA"))
        return compile_model(self, *args, **kwargs)

    def spy_infer(self, *args, **kwargs):
        infers.append(1)
        return infer(self, *args, **kwargs)
    monkeypatch.setattr(ov.Core, "compile_model", spy_compile)
    monkeypatch.setattr(ov.InferRequest, "infer", spy_infer)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    pred = ExportedPredictor(onnx_models["r18"][2], runtime="openvino")
    assert seen == [None] and os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    outputs = pred.network(pred.prepare(cv2.imread(str(IMAGES[0])))[0])
    assert len(infers) == 1 and len(outputs) == 3


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_an_openvino_failure_is_one_error_naming_the_model(onnx_models):
    """OpenVINO raises RuntimeError subclasses of its own: a failed inference (here an input of another size than
    the static model's; out of memory in practice) is a SolovError naming the model, and the runner still works."""
    import numpy as np

    from solov2.deploy.runtimes import openvino_runner
    from solov2.errors import SolovError
    model = onnx_models["r18"][2]
    run = openvino_runner(model, (448, 768))
    with pytest.raises(SolovError, match=r"r18\.onnx: OpenVINO failed to run it \("):
        run(np.zeros((1, 3, 64, 64), np.float32))
    assert [o.shape for o in run(np.zeros((1, 3, 448, 768), np.float32))][2] == (1, 128, 112, 192)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_profile_lists_where_the_time_goes(onnx_models, capsys, runtime):
    """`python -m solov2.tools.benchmark profile r18.onnx`: the operator types by time, which sum to about the
    measured run time, and (onnxruntime) the convolutions' GFLOP from their shapes: light-R18 at 448x768 does
    ~100 GFLOP (README "Per stage": 25 + 35 + 43), so the count must be in that range."""
    from solov2.tools.benchmark import main
    main(["profile", str(onnx_models["r18"][2]), "--runtime", runtime, "--runs", "2"])
    out = capsys.readouterr().out
    m = re.search(r"([\d.]+) s per run \(median of 2\); operators sum to ([\d.]+) s", out)
    # the per-operator times and the wall time of a call differ by the call's own overhead and by the one run
    # in three that is slower; a profile that misses half of the time or counts it twice fails
    assert m and 0.5 < float(m.group(2)) / float(m.group(1)) < 2, out
    assert re.search(r"^  (Conv|Convolution) ", out, re.M), out
    if runtime == "onnxruntime":
        g = re.search(r"convolutions \+ matrix products: ([\d.]+) GFLOP in", out)
        assert g and 80 < float(g.group(1)) < 130, out
