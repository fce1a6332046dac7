"""Random official SOLOv2 weights for the torch parity tests: well-scaled values for every key of an official
checkpoint, a class bias that gives non-trivial post-processing, and the mmdetection 2.x/3.x key layout."""
import collections
import re

import numpy as np
import torch
import torch_solov2 as ts


def random_official_state(keys, seed: int) -> "collections.OrderedDict[str, torch.Tensor]":
    """Random, well-scaled weights for every [key, shape, dtype] of an official key fixture (in its order).

    Per key one z ~ N(0,1) and one u ~ U[0,1) of the key's shape (numpy default_rng(seed)). DCN conv_offset: weight
    z*sqrt(1/fan_in), bias 1.5z (offsets of 1-3 pixels, DCNv2 masks mostly outside [0.3, 0.7]). Convs He-normal
    z*sqrt(2/fan_in) (FPN: sqrt(1/fan_in), bias 0.01z); BN weight 1+0.1z (x0.2 for each block's last BN so that
    101 non-zero residual branches keep C2..C5 at std ~1-5), bias/running_mean 0.1z, running_var 0.5+u;
    GN weight 1+0.1z, bias 0.1z; solo_kernel 0.02z, bias 0.05; solo_cate 0.25z, bias 0 (see calibrate_cate_bias);
    num_batches_tracked = tensor(0).
    """
    rng = np.random.default_rng(seed)
    sd = collections.OrderedDict()
    for key, shape, dtype in keys:
        if dtype == "int64":
            sd[key] = torch.tensor(0)
            continue
        z, u = rng.standard_normal(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)
        last = key.rsplit(".", 1)[-1]
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else 1
        if "conv_offset" in key:       # offsets of several pixels; DCNv2 mask logits (last third) around +-1.5
            v = z * np.sqrt(1.0 / fan_in) if len(shape) == 4 else 1.5 * z
        elif len(shape) == 4:
            gain = {"neck": 1.0}.get(key.split(".")[0], 2.0)
            v = 0.25 * z if "solo_cate" in key else 0.02 * z if "solo_kernel" in key else z * np.sqrt(gain / fan_in)
        elif "solo_cate" in key:
            v = np.zeros(shape, np.float32)
        elif "solo_kernel" in key:
            v = np.full(shape, 0.05, np.float32)
        elif key.startswith("neck."):
            v = 0.01 * z
        elif last == "weight":
            v = (1 + 0.1 * z) * (0.2 if re.search(r"\.layer\d\.\d+\.bn3\.", key) else 1.0)
        elif last == "running_var":
            v = 0.5 + u
        else:                                                          # BN/GN bias, running_mean
            v = 0.1 * z
        sd[key] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    return sd


def calibrate_cate_bias(model: ts.SOLOv2, x: torch.Tensor, seed: int) -> torch.Tensor:
    """solo_cate bias = 0.3 + z_k - max zero-bias logit of class k on `x`: each class's best cell sits near
    logit 0.3 +- 1, so most of the 80 classes have candidates above score_thr (non-trivial post-processing)."""
    with torch.no_grad():
        model.bbox_head.solo_cate.bias.zero_()
        logits = torch.cat([c[0].flatten(1) for c in model(x)["cate_logits"]], 1)      # (C, cells)
    z = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal(logits.shape[0], dtype=np.float32))
    return 0.3 + z - logits.max(1).values


def to_mmdet3(sd):
    """Official keys -> mmdetection 2.x/3.x SOLOv2 keys (SOLOV2Head + MaskFeatModule), in mmdet's module order
    (backbone, neck, cls_convs, kernel_convs, conv_cls, conv_kernel, mask_feature_head)."""
    head = [("bbox_head.cate_convs.", "mask_head.cls_convs."), ("bbox_head.kernel_convs.", "mask_head.kernel_convs."),
            ("bbox_head.solo_cate.", "mask_head.conv_cls."), ("bbox_head.solo_kernel.", "mask_head.conv_kernel."),
            ("mask_feat_head.conv_pred.0.", "mask_head.mask_feature_head.conv_pred."),
            ("mask_feat_head.convs_all_levels.", "mask_head.mask_feature_head.convs_all_levels.")]
    out = collections.OrderedDict((k, v) for k, v in sd.items() if k.startswith(("backbone.", "neck.")))
    for old, new in head:
        out.update((new + k[len(old):], v) for k, v in sd.items() if k.startswith(old))
    assert len(out) == len(sd)
    return out
