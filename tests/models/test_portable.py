"""The ONNX-exportable formulations (solov2.models.portable) equal the native operators they replace (1e-5).

Each function against its native counterpart on awkward sizes (odd maps, non-integer ratios, ties), then whole
networks: the reference light-R18 (official weights) and a light-R50-DCNv2 with random weights, native vs
portable, in GRAPH and PYNATIVE.
"""
import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest
from conftest import REPO, load_reference_weights, reference_config

from solov2.config import load_config
from solov2.deploy.export import pre_nms_scores, relative_differences
from solov2.models.solov2 import SOLOv2Eval, build_model
from solov2.models.dcn import DeformConv2d
from solov2.models.heads import coord_features, points_nms
from solov2.models.portable import (GroupNormPortable, bilinear_matrix, coord_features_portable, points_nms_portable,
                                    resize_bilinear_portable, resize_nearest_portable, sigmoid_portable,
                                    subsample2)
from solov2.models.resize import resize_bilinear, resize_nearest

def rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


class Apply(nn.Cell):
    """fn(x, *static args) as a cell, so GRAPH mode compiles it (the portable constants are built then)."""

    def __init__(self, fn, *args):
        super().__init__()
        self.fn, self.args = fn, args

    def construct(self, x):
        return self.fn(x, *self.args)


def both(fn_native, fn_portable, x, *args):
    t = ms.Tensor(x)
    return Apply(fn_native, *args)(t).asnumpy(), Apply(fn_portable, *args)(t).asnumpy()


def test_bilinear_matrix_rows_sum_to_one_and_fail_on_swapped_centres():
    m = bilinear_matrix(25, 12)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    x = np.random.default_rng(0).standard_normal((1, 1, 25, 1)).astype(np.float32)
    native = resize_bilinear(ms.Tensor(x), (12, 1)).asnumpy()[0, 0, :, 0]
    np.testing.assert_allclose(m @ x[0, 0, :, 0], native, atol=1e-5)
    corner = np.linspace(0, 24, 12).round().astype(int)   # an align_corners-like sampling must not pass
    assert np.abs(x[0, 0, corner, 0] - native).max() > 1e-3


@pytest.mark.parametrize("src,dst", [((25, 34), (12, 12)), ((13, 17), (40, 40)), ((8, 12), (16, 24)),
                                     ((7, 9), (14, 18)), ((50, 68), (25, 34))])
def test_bilinear_equal(ms_mode, src, dst):
    x = np.random.default_rng(1).standard_normal((2, 3, *src)).astype(np.float32)
    a, b = both(resize_bilinear, resize_bilinear_portable, x, dst)
    assert a.shape == b.shape == (2, 3, *dst)
    assert rel(b, a) < 1e-5


@pytest.mark.parametrize("src", [(5, 7), (8, 12)])
def test_nearest_and_subsample_equal(ms_mode, src):
    x = np.random.default_rng(2).standard_normal((1, 4, *src)).astype(np.float32)
    dst = (src[0] * 2, src[1] * 2)
    a, b = both(resize_nearest, resize_nearest_portable, x, dst)
    np.testing.assert_array_equal(a, b)
    a = ms.ops.max_pool2d(ms.Tensor(x), kernel_size=1, stride=2).asnumpy()
    b = Apply(subsample2)(ms.Tensor(x)).asnumpy()
    np.testing.assert_array_equal(a, b)


def test_points_nms_equal_with_ties(ms_mode):
    rng = np.random.default_rng(3)
    heat = rng.random((2, 5, 12, 12)).astype(np.float32)
    heat[0, 0, 3:6, 3:6] = 0.5                   # plateaus: ties survive in both
    heat[1, 1] = 0.0                             # all zero: zero stays zero
    a, b = both(points_nms, points_nms_portable, heat)
    np.testing.assert_array_equal(a, b)
    assert 0 < (b > 0).mean() < 1


def test_sigmoid_equal_on_tiny_and_saturated_scores(ms_mode):
    x = np.linspace(-100, 40, 4001, dtype=np.float32).reshape(1, 1, 1, -1)
    a, b = both(ms.ops.sigmoid, sigmoid_portable, x)
    assert rel(b, a) < 1e-6
    small = a > 1e-30
    assert float((np.abs(b - a)[small] / a[small]).max()) < 1e-5   # also relative to each tiny score


def test_coordinates_equal(ms_mode):
    x = np.zeros((2, 3, 7, 11), np.float32)
    a, b = both(coord_features, coord_features_portable, x)
    np.testing.assert_allclose(b, a, atol=1e-6)


def test_group_norm_equal(ms_mode):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 64, 9, 13)) * 3 + 1).astype(np.float32)
    native, portable = nn.GroupNorm(32, 64, eps=1e-5), GroupNormPortable(32, 64, eps=1e-5)
    gamma, beta = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    for cell in (native, portable):
        cell.gamma.set_data(ms.Tensor(gamma))
        cell.beta.set_data(ms.Tensor(beta))
    assert [p.name for p in native.get_parameters()] == [p.name for p in portable.get_parameters()]
    assert rel(portable(ms.Tensor(x)).asnumpy(), native(ms.Tensor(x)).asnumpy()) < 1e-5


@pytest.mark.parametrize("kind,stride", [("DCNv2", 1), ("DCN", 2)])
def test_deformable_portable_equals_gather(ms_mode, kind, stride):
    from mindspore.common.initializer import Normal
    cells = [DeformConv2d(8, 6, 3, kind=kind, stride=stride, padding=1, weight_init=Normal(0.1),
                          offset_init=Normal(0.3), impl=impl) for impl in ("gather", "portable")]
    ms.load_param_into_net(cells[1], cells[0].parameters_dict(), strict_load=True)
    x = ms.Tensor(np.random.default_rng(5).standard_normal((2, 8, 11, 13)).astype(np.float32))
    a, b = (c(x).asnumpy() for c in cells)
    assert rel(b, a) < 1e-5


def eval_pair(cfg, load):
    native, portable = build_model(cfg), build_model(cfg, portable=True)
    load(native)
    assert sorted(native.parameters_dict()) == sorted(portable.parameters_dict())
    not_loaded, unused = ms.load_param_into_net(portable, native.parameters_dict(), strict_load=True)
    assert not not_loaded and not unused
    for n in (native, portable):
        n.set_train(False)
    return SOLOv2Eval(native), SOLOv2Eval(portable)


def assert_outputs_equal(pair, x, num_grids, score_thr=0.1):
    """1e-5 relative, except cells that points-NMS keeps in only one of the two: those must tie with a neighbour or
    score below score_thr, where they cannot change an instance (`relative_differences`)."""
    outs = [[o.asnumpy() for o in net(ms.Tensor(x))] for net in pair]
    for a, b in zip(*outs):
        assert a.shape == b.shape
    d = relative_differences(*outs, num_grids, pre_nms_scores(pair[0].net, x))
    assert max(d["cate_scores"], d["kernels"], d["mask_feat"]) < 1e-5, d
    assert d["nms_flip_score"] < score_thr, d
    return outs, d


def test_light_r18_portable_equals_native(ms_mode):
    pair = eval_pair(reference_config(), load_reference_weights)
    x = np.random.default_rng(6).standard_normal((1, 3, 224, 320)).astype(np.float32)
    outs, d = assert_outputs_equal(pair, x, reference_config().head.num_grids)
    assert (outs[1][0] > 0.05).sum() > 0          # some cell scores survive points-NMS: not a zero map


def test_light_r50_dcn_portable_equals_native(ms_mode):
    cfg = load_config(REPO / "configs" / "solov2" / "solov2_light_512_dcn_r50_fpn_8gpu_3x.py")

    def randomise(net):   # offsets of a few pixels, so the deformable sampling matters
        rng = np.random.default_rng(7)
        for p in net.get_parameters():
            if "conv_offset" in p.name:
                p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.05))
    pair = eval_pair(cfg, randomise)
    x = np.random.default_rng(8).standard_normal((1, 3, 160, 192)).astype(np.float32)
    assert_outputs_equal(pair, x, cfg.head.num_grids)
