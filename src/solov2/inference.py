"""Single-image inference: official test preprocessing -> SOLOv2Eval (in the graph) -> post-processing (NumPy)."""
from typing import Dict, List, Optional, Tuple

import mindspore as ms
import numpy as np

from solov2.config import SOLOv2Config
from solov2.data.transforms import padded_test_size, preprocess_test
from solov2.models.solov2 import SOLOv2Eval, build_model
from solov2.models.postprocess import get_seg_single
from solov2.checkpoint import checkpoint_class_names, load_weights
from solov2.errors import SolovError

NetOutputs = Tuple[np.ndarray, np.ndarray, np.ndarray]


def resolve_class_names(cfg: SOLOv2Config, checkpoint=None) -> List[str]:
    """Class names from the config, else from the converted checkpoint's sidecar, else `class_<i>`."""
    n = cfg.head.cate_out_channels
    names = cfg.class_names or (checkpoint_class_names(checkpoint) if checkpoint else None)
    if names and len(names) != n:
        raise SolovError(f"{len(names)} class names given but the model has {n} classes "
                         f"({cfg.source or 'config'}: num_classes={cfg.head.num_classes} includes background)")
    return list(names) if names else [f"class_{i}" for i in range(n)]


class Predictor:
    """Holds a model with loaded weights; `predict(img_bgr)` returns the official SOLOv2 result.

    The network runs in whatever mode `solov2.engine.runtime.set_runtime` selected. In GRAPH_MODE it compiles once for
    every image size (dynamic H and W); static_shapes=True compiles once per padded input size instead (the
    pre-0.2 behaviour, kept as an option: same results, see the README). The three stages `prepare`, `network`
    and `finish` are also public, so a caller can overlap them across images (`solov2.overlap`).
    """

    def __init__(self, cfg: SOLOv2Config, checkpoint: Optional[str] = None, net=None, static_shapes: bool = False):
        self.cfg = cfg
        if net is None:
            net = build_model(cfg)
            if checkpoint is not None:
                load_weights(net, checkpoint)
        net.set_train(False)
        self.net = SOLOv2Eval(net, dynamic_shape=not static_shapes)
        self.class_names = resolve_class_names(cfg, checkpoint)
        self.source = cfg.source or "the config"   # named by class-count errors

    @property
    def compiled_graphs(self) -> int:
        """How many GRAPH_MODE graphs the network has compiled so far (0 in PYNATIVE_MODE)."""
        return len(self.net.compile_cache)

    def check_size(self, h: int, w: int) -> None:
        """SolovError when an (h, w) image cannot be prepared (too thin for the test scale), from its size alone."""
        d = self.cfg.data
        padded_test_size(h, w, d.test_scale, d.size_divisor)

    def prepare(self, img_bgr: np.ndarray) -> Tuple[np.ndarray, dict]:
        """img_bgr uint8 (H, W, 3) -> (x float32 (1, 3, Hp, Wp), meta): the official test pipeline."""
        d = self.cfg.data
        return preprocess_test(img_bgr, d.test_scale, d.mean, d.std, d.to_rgb, d.size_divisor)

    def network(self, x: np.ndarray) -> NetOutputs:
        """x (1, 3, Hp, Wp) -> cate_scores (cells, C), kernels (cells, E), mask_feat (E, Hp/4, Wp/4), float32."""
        cate, kernels, mask_feat = self.net(ms.Tensor(x))
        return cate.asnumpy()[0], kernels.asnumpy()[0], mask_feat.asnumpy()[0]

    def finish(self, outputs: NetOutputs, meta: dict) -> Dict[str, np.ndarray]:
        """Network outputs -> masks bool (n, H, W), labels int64 (n,) 0-based, scores float32 (n,)."""
        cate, kernels, mask_feat = outputs
        c = self.cfg
        return get_seg_single(cate, kernels, mask_feat, meta["img_shape"], meta["ori_shape"], c.test,
                              c.head.num_grids, c.head.strides)

    def predict(self, img_bgr: np.ndarray) -> Dict[str, np.ndarray]:
        """img_bgr uint8 (H, W, 3) -> masks bool (n, H, W), labels int64 (n,) 0-based, scores float32 (n,)."""
        x, meta = self.prepare(img_bgr)
        return self.finish(self.network(x), meta)
