"""The MindSpore cells against the official model: parameter names/shapes and stage-by-stage outputs.

Reference outputs were computed by the official PyTorch code (shared/fixtures/reference, README §4, §9).
"""
import json

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest
from conftest import REF, SHARED, official_to_ms_name

from solov2.config import BackboneConfig, HeadConfig, MaskFeatConfig, NeckConfig, SOLOv2Config
from solov2.models.solov2 import SOLOv2Eval, build_model
from solov2.models.heads import coord_features, points_nms

GRIDS = [40, 36, 24, 16, 12]


def light_config(depth: int) -> SOLOv2Config:
    chans = (64, 128, 256, 512) if depth in (18, 34) else (256, 512, 1024, 2048)
    return SOLOv2Config(backbone=BackboneConfig(depth=depth), neck=NeckConfig(in_channels=chans),
                        head=HeadConfig(num_classes=81, stacked_convs=2, seg_feat_channels=256, ins_out_channels=128),
                        mask_feat=MaskFeatConfig(out_channels=128, num_classes=128))


@pytest.mark.parametrize("fixture,cfg", [("solov2_r101", SOLOv2Config()),
                                         ("solov2_light_448_r18", light_config(18)),
                                         ("solov2_light_r50", light_config(50))])
def test_parameter_names_and_shapes_equal_official_keys(fixture, cfg):
    spec = json.loads((SHARED / "fixtures" / f"{fixture}_official_keys.json").read_text())
    official = {official_to_ms_name(k): tuple(s) for k, s, _ in spec["keys"] if not k.endswith("num_batches_tracked")}
    net = build_model(cfg)
    ours = {p.name: tuple(p.shape) for p in net.get_parameters()}
    assert sorted(ours) == sorted(official)
    assert ours == official
    n_total = sum(int(np.prod(s)) for k, s in ours.items() if "moving_" not in k)
    n_train = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    assert n_total == int(spec["num_parameters_total"])
    assert n_train == int(spec["num_parameters_trainable"])   # stem + layer1 frozen (frozen_stages=1)


def test_coord_features_official_order():
    c = coord_features(ms.Tensor(np.zeros((2, 4, 3, 5), np.float32))).asnumpy()
    assert c.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(c[1, 0, 2], np.linspace(-1, 1, 5), atol=1e-7)   # channel 0: x along the width
    np.testing.assert_allclose(c[0, 1, :, 4], np.linspace(-1, 1, 3), atol=1e-7)  # channel 1: y along the height


def test_points_nms_golden_example(ms_mode):
    # shared/docs/solov2_reference.md §3: a cell survives iff >= its top, left and top-left neighbours (ties survive).
    heat = np.array([[.1, .5, .2], [.3, .5, .4], [.9, .1, .4]], np.float32)[None, None]
    out = points_nms(ms.Tensor(heat)).asnumpy()[0, 0]
    np.testing.assert_array_equal(out, np.array([[.1, .5, 0], [.3, .5, 0], [.9, 0, 0]], np.float32))


def test_eval_forward_matches_official_stages(reference_net, ms_mode):
    ref = np.load(REF / "inference_trashcan_val.npz")
    x = ms.Tensor(ref["input"])
    feats = reference_net.neck(reference_net.backbone(x))
    for i, f in enumerate(feats):
        r = ref[f"fpn_p{i + 2}"].astype(np.float32)   # fp16-rounded reference
        assert f.shape == r.shape
        # half an fp16 ulp of each reference value (2^-11 relative), plus the 1e-4 stage criterion of every other
        # comparison (measured beyond the fp16 rounding: 1.2e-6 of max|r|)
        bound = 1e-4 * np.abs(r).max() + 2.0 ** -11 * np.abs(r)
        assert (np.abs(f.asnumpy() - r) <= bound).all(), f"P{i + 2}"

    cate, kern, mask_feat = (t.asnumpy()[0] for t in SOLOv2Eval(reference_net)(x))
    r = ref["mask_feat"][0]
    assert mask_feat.shape == r.shape
    assert np.abs(mask_feat - r).max() <= 1e-4 * np.abs(r).max()
    assert cate.shape == (sum(s * s for s in GRIDS), 22) and kern.shape == (cate.shape[0], 128)
    off = 0
    for lvl, s in enumerate(GRIDS):
        rc = ref[f"cate_pred_l{lvl}"][0].reshape(-1, 22)
        rk = ref[f"kernel_pred_l{lvl}"][0].reshape(128, -1).T
        c, k = cate[off:off + s * s], kern[off:off + s * s]
        off += s * s
        assert np.abs(c - rc).max() <= 1e-4, f"cate level {lvl}"
        assert np.abs(k - rk).max() <= 1e-4 * np.abs(rk).max(), f"kernel level {lvl}"
        # Same points-NMS survivors. Scores below 1e-6 (logits < -13.8) are excluded: there float32 ties in
        # the 2x2 max decide, e.g. one cell at 1.3e-9 here, five orders of magnitude below score_thr 0.1.
        big = (c > 1e-6) | (rc > 1e-6)
        np.testing.assert_array_equal(c[big] > 0, rc[big] > 0)


def test_train_forward_logits_match_official(reference_net, ms_mode):
    """Training forward (norm_eval keeps BN on running stats) gives the official raw cate logits."""
    ref = np.load(REF / "train_trashcan_batch2.npz")
    reference_net.set_train(True)
    try:
        cate_logits, kernels, mask_feat = reference_net(ms.Tensor(ref["img"]))
    finally:
        reference_net.set_train(False)
    cate_logits = cate_logits.asnumpy()
    assert mask_feat.shape == (2, 128, 112, 192)
    off = 0
    for lvl, s in enumerate(GRIDS):
        r = ref[f"train_cate_logits_l{lvl}"].transpose(0, 2, 3, 1).reshape(2, -1, 22)
        got = cate_logits[:, off:off + s * s]
        off += s * s
        assert np.abs(got - r).max() <= 1e-4 * np.abs(r).max(), f"level {lvl}"


@pytest.mark.parametrize("depth", [34, 50, 101])
def test_other_depths_build_and_run_small(depth, ms_mode):
    cfg = light_config(depth) if depth != 101 else SOLOv2Config()
    net = build_model(cfg)
    net.set_train(False)
    cate, kern, mask_feat = SOLOv2Eval(net)(ms.Tensor(np.random.default_rng(0).normal(size=(1, 3, 64, 96))
                                                     .astype(np.float32)))
    e = cfg.head.ins_out_channels
    assert cate.shape == (1, 3872, 80) and kern.shape == (1, 3872, e) and mask_feat.shape == (1, e, 16, 24)
    assert np.isfinite(cate.asnumpy()).all() and (mask_feat.asnumpy() >= 0).all()   # conv_pred ends in ReLU


class _ReluPool(nn.Cell):
    """sum(w * pool(relu(x))), as in the ResNet stem (the pool sees ReLU outputs only)."""

    def __init__(self, pool, w):
        super().__init__()
        self.pool, self.w = pool, w

    def construct(self, x):
        return (self.pool(ms.ops.relu(x)) * self.w).sum()


@pytest.mark.parametrize("hw", [(112, 160), (15, 9)])
def test_stem_pool_equals_the_padded_pool_in_value_and_gradient(ms_mode, hw):
    """StemMaxPool (zero padding + unpadded pool) == the official MaxPool2d(3, 2, padding 1) after a ReLU: outputs
    and input gradients bitwise (about half of the ReLU outputs are zeros, so padding-zero ties occur)."""
    from solov2.models.resnet import StemMaxPool
    x = ms.Tensor(np.random.default_rng(9).standard_normal((2, 4, *hw)).astype(np.float32))
    official_pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
    a, b = official_pool(ms.ops.relu(x)).asnumpy(), StemMaxPool()(ms.ops.relu(x)).asnumpy()
    assert a.shape == b.shape == (2, 4, (hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1)
    np.testing.assert_array_equal(a, b)
    w = ms.Tensor(np.random.default_rng(10).standard_normal(a.shape).astype(np.float32))
    grad_a = ms.grad(_ReluPool(official_pool, w))(x).asnumpy()
    grad_b = ms.grad(_ReluPool(StemMaxPool(), w))(x).asnumpy()
    assert np.abs(grad_a).sum() > 0
    np.testing.assert_array_equal(grad_a, grad_b)


@pytest.mark.parametrize("norm_eval", [False, True])
def test_frozen_stages_keep_their_bn_statistics_whatever_norm_eval(ms_mode, norm_eval):
    """Official `_freeze_stages` puts the stem and layer1..frozen_stages in eval mode on every train() call, so
    their BN statistics stay those of the pretrained model even with norm_eval=False; the other stages then
    update theirs in a training forward (with norm_eval=True none does)."""
    from solov2.models.resnet import ResNet
    ms.set_seed(0)
    net = ResNet(depth=18, frozen_stages=1, norm_eval=norm_eval, groups=1, base_width=4, dcn=None,
                 stage_with_dcn=(False,) * 4, dcn_impl="native")
    net.set_train(True)
    stats = lambda: {n: p.asnumpy().copy() for n, p in net.parameters_and_names() if "moving_mean" in n}
    before = stats()
    net(ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)))
    after = stats()
    frozen = [n for n in before if n.startswith(("bn1.", "layer1."))]
    others = [n for n in before if n not in frozen]
    assert len(frozen) == 5 and len(others) == 15   # stem + 4 in layer1; 3 stages x (4 + downsample)
    for n in frozen:
        np.testing.assert_array_equal(after[n], before[n], err_msg=n)
    for n in others:
        assert (after[n] != before[n]).any() != norm_eval, n
