"""What runs an exported network: x (1, 3, H, W) float32 -> [cate_scores (1, cells, C), kernels (1, cells, E),
mask_feat (1, E, H/4, W/4)] float32 arrays.

A .mindir runs in MindSpore (`nn.GraphCell`); an .onnx in onnxruntime (default) or OpenVINO, both CPU, both
optional extras (`pip install -e ".[onnx]"`, `".[openvino]"`). `solov2.deploy.exported.ExportedPredictor` puts a
runner behind the `Predictor` stages.
"""
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from solov2.cpu import onednn_isa_unset
from solov2.errors import SolovError, first_line

RUNTIMES = ("onnxruntime", "openvino")
Runner = Callable[[np.ndarray], List[np.ndarray]]


class MissingRuntime(SolovError):
    """The package that runs this kind of model is not installed (onnxruntime or openvino for .onnx)."""


def network_runner(path: Path, input_hw: Optional[Tuple[int, int]], runtime: str = "onnxruntime") -> Runner:
    """The runner of the exported file: `mindir_runner` for .mindir, else the ONNX `runtime`'s. input_hw: the
    export's static size, None for a dynamic MindIR."""
    if path.suffix.lower() != ".onnx":
        return mindir_runner(path, dynamic=input_hw is None)
    return openvino_runner(path, input_hw) if runtime == "openvino" else onnxruntime_runner(path, input_hw)


def _check_input(path: Path, shape, input_hw: Tuple[int, int]) -> None:
    """SolovError unless the model's declared input shape (N, 3, H, W) has the sidecar's H and W."""
    if tuple(shape[2:]) != tuple(input_hw):
        raise SolovError(f"{path}: its input is {list(shape)}, the sidecar says [1, 3, {input_hw[0]}, {input_hw[1]}]")


def require_onnxruntime(what: str, hint: str = ""):
    """The onnxruntime module; MissingRuntime '<what> needs onnxruntime: <install command><hint>' without it."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingRuntime(f"{what} needs onnxruntime: pip install -e '.[onnx]'{hint}") from None
    return onnxruntime


def onnxruntime_runner(path: Path, input_hw: Tuple[int, int]) -> Runner:
    """The three outputs through an onnxruntime CPU session of `path`."""
    ort = require_onnxruntime(f"{path}: running an ONNX model")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a corrupt or foreign file
        raise SolovError(f"{path}: onnxruntime cannot load it ({first_line(e)})") from None
    inp = session.get_inputs()[0]
    _check_input(path, inp.shape, input_hw)

    def run(x: np.ndarray) -> List[np.ndarray]:
        try:
            return session.run(None, {inp.name: x})
        except Exception as e:   # onnxruntime's own types (RuntimeException: out of memory, ...) derive from
            raise SolovError(f"{path}: onnxruntime failed to run it ({first_line(e)})") from e   # Exception only
    return run


def mindir_runner(path: Path, dynamic: bool) -> Runner:
    """The three outputs through `nn.GraphCell(mindspore.load(path))`. dynamic: the
    graph declares N, H and W unknown, so it compiles once for every input size (as the native `SOLOv2Eval`)."""
    import mindspore as ms
    try:
        graph = ms.nn.GraphCell(ms.load(str(path)))
    except (RuntimeError, ValueError, TypeError) as e:
        raise SolovError(f"{path}: MindSpore cannot load it ({first_line(e)})") from None
    if dynamic:
        graph.set_inputs(ms.Tensor(shape=[None, 3, None, None], dtype=ms.float32))
    return lambda x: [o.asnumpy() for o in graph(ms.Tensor(x))]




def openvino_compiled(path: Path, **config):
    """`path` compiled by OpenVINO's CPU plugin in float32 (plus `config`, e.g. PERF_COUNT=True). Compiled without
    ONEDNN_MAX_CPU_ISA (`solov2.cpu.onednn_isa_unset`): OpenVINO's own oneDNN reads it too, and under MindSpore's
    AVX2 cap it crashed."""
    with onednn_isa_unset():
        try:
            import openvino as ov
        except ImportError:
            raise MissingRuntime(f"{path}: --runtime openvino needs OpenVINO: pip install -e '.[openvino]'") from None
        try:
            return ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", **config})
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own for a corrupt or foreign file
            raise SolovError(f"{path}: OpenVINO cannot load it ({first_line(e)})") from None


def openvino_runner(path: Path, input_hw: Tuple[int, int]) -> Runner:
    """The three outputs through OpenVINO's CPU plugin reading the same .onnx, in float32: the precision hint keeps
    OpenVINO from choosing bf16 on CPUs that have it (AMX, AVX-512 BF16), which would not give the native results."""
    compiled = openvino_compiled(path)
    shape = compiled.inputs[0].get_partial_shape()
    if shape.is_dynamic:
        raise SolovError(f"{path}: its input {shape} is not of one static size (export.py writes one)")
    _check_input(path, shape.to_shape(), input_hw)
    request = compiled.create_infer_request()
    outputs = compiled.outputs

    def run(x: np.ndarray) -> List[np.ndarray]:
        try:
            result = request.infer({0: x})   # one inference, then its three outputs (not one inference per output)
        except Exception as e:   # OpenVINO's own RuntimeError subclasses (out of memory, ...)
            raise SolovError(f"{path}: OpenVINO failed to run it ({first_line(e)})") from e
        return [np.asarray(result[o]) for o in outputs]
    return run
