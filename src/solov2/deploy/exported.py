"""Running an exported SOLOv2 (.mindir through MindSpore, .onnx through onnxruntime) with the native results.

`ExportedPredictor` has the interface of `solov2.inference.Predictor` (prepare -> network -> finish, predict,
class_names), so test.py, run.py and valuation.py use either. Only the network is the exported file; the
preprocessing is the official test pipeline (`preprocess_test`, then, for a static-size export, zero padding at the
bottom and right up to the export size) and the post-processing is the shared NumPy `get_seg_single`, with the
settings of the sidecar (`solov2.deploy.sidecar`).
"""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from solov2.data.transforms import padded_test_size, preprocess_test
from solov2.config import SOLOv2Config
from solov2.deploy.sidecar import check_config, file_sha256, read_sidecar, shapes_match, sidecar_path, test_settings
from solov2.deploy.runtimes import RUNTIMES, network_runner
from solov2.errors import SolovError, check_file
from solov2.models.postprocess import get_seg_single

MODEL_SUFFIXES = (".mindir", ".onnx")
NetOutputs = Tuple[np.ndarray, np.ndarray, np.ndarray]


class ExportedPredictor:
    """An exported network (.mindir or .onnx with its sidecar) behind the `Predictor` interface.

    cfg: a config of the same model (`check_config`), whose test_cfg and class names (if it has them) are used;
    without it, the sidecar's test_cfg with `overrides` (`test_cfg.<key>=value` strings, --cfg-options).
    runtime: what runs an .onnx model, 'onnxruntime' or 'openvino' (`solov2.deploy.runtimes`); a .mindir runs in
    MindSpore.
    """

    compiled_graphs = 0   # the exported graph compiles once (one static size, or one dynamic graph)

    def __init__(self, model_path, cfg: Optional[SOLOv2Config] = None, overrides: Sequence[str] = (),
                 runtime: str = "onnxruntime"):
        path = Path(model_path)
        if path.suffix.lower() not in MODEL_SUFFIXES:
            raise SolovError(f"{path}: --model must be an exported .mindir or .onnx file (export.py)")
        if path.suffix.lower() == ".mindir" and path.suffix != ".mindir":
            raise SolovError(f"{path}: MindSpore loads a MindIR only by its lower-case suffix: rename it to "
                             f"{path.with_suffix('.mindir').name}")
        if runtime not in RUNTIMES:
            raise SolovError(f"--runtime {runtime}: must be one of {', '.join(RUNTIMES)}")
        check_file(path, "file")
        self.spec = read_sidecar(path)
        if file_sha256(path) != self.spec.model_sha256:   # e.g. a re-export copied without its sidecar
            raise SolovError(f"{path}: not the file its sidecar {sidecar_path(path).name} was written for (its "
                             "SHA-256 differs): copy a model together with its sidecar, or export it again")
        self.path = path
        self.source = str(path)   # named by class-count errors
        if cfg is not None:
            check_config(self.spec, cfg, model_path=path)
            self.test_cfg = cfg.test
            self.class_names = list(cfg.class_names or self.spec.class_names)
        else:
            self.test_cfg = test_settings(self.spec, overrides, source=str(path))
            self.class_names = list(self.spec.class_names)
        self._run = network_runner(path, self.spec.input_hw, runtime=runtime)

    def check_size(self, h: int, w: int) -> None:
        """SolovError when an (h, w) image cannot be prepared: too thin for the test scale, or, for a static-size
        export, larger than its input once resized and padded. From the size alone (`padded_test_size`)."""
        s = self.spec
        hp, wp = padded_test_size(h, w, s.test_scale, s.size_divisor)
        if s.input_hw is not None and (hp > s.input_hw[0] or wp > s.input_hw[1]):
            raise SolovError(f"{self.path}: a {w}x{h} image is {wp}x{hp} at the test scale (padded), larger than the "
                             f"model's static input {s.input_hw[1]}x{s.input_hw[0]} (W x H); export it with a larger "
                             "--input-size")

    def prepare(self, img_bgr: np.ndarray) -> Tuple[np.ndarray, dict]:
        """img_bgr uint8 (H, W, 3) -> (x float32 (1, 3, Hp, Wp), meta): the official test pipeline, as the native
        `Predictor`; a static-size export then pads x with zeros (bottom, right) to its input size (H, W).
        SolovError when the padded image is larger than that size."""
        s = self.spec
        self.check_size(*img_bgr.shape[:2])
        x, meta = preprocess_test(img_bgr, s.test_scale, s.mean, s.std, s.to_rgb, s.size_divisor)
        if s.input_hw is None:
            return x, meta
        (h, w), (eh, ew) = x.shape[2:], s.input_hw
        padded = np.zeros((1, 3, eh, ew), np.float32)
        padded[:, :, :h, :w] = x
        return padded, dict(meta, pad_shape=(eh, ew, 3))

    def network(self, x: np.ndarray) -> NetOutputs:
        """x (1, 3, H, W) -> cate_scores (cells, C), kernels (cells, E), mask_feat (E, H/4, W/4), float32."""
        outs = self._run(np.ascontiguousarray(x, dtype=np.float32))
        shapes = tuple(tuple(o.shape) for o in outs)
        if not shapes_match(shapes, self.spec.output_shapes):
            raise SolovError(f"{self.path}: outputs {shapes}, the sidecar says {self.spec.output_shapes}")
        return outs[0][0], outs[1][0], outs[2][0]

    def finish(self, outputs: NetOutputs, meta: dict) -> Dict[str, np.ndarray]:
        """Network outputs -> masks bool (n, H0, W0), labels int64 (n,) 0-based, scores float32 (n,)."""
        cate, kernels, mask_feat = outputs
        return get_seg_single(cate, kernels, mask_feat, meta["img_shape"], meta["ori_shape"], self.test_cfg,
                              self.spec.num_grids, self.spec.strides)

    def predict(self, img_bgr: np.ndarray) -> Dict[str, np.ndarray]:
        """img_bgr uint8 (H, W, 3) -> `finish`'s masks, labels and scores."""
        x, meta = self.prepare(img_bgr)
        return self.finish(self.network(x), meta)
