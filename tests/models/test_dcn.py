"""Deformable convolution cells (solov2.models.dcn) against the independent torch reference (torch_dcn.py).

Offsets of several pixels (corners fall outside the map), masks away from 0.5, stride 2, groups, a 1x1 kernel;
forward and gradients (input, weight, conv_offset) in GRAPH and PYNATIVE, both implementations, dynamic shapes,
and a swapped (dx, dy) reference that must fail.
"""
import mindspore as ms
import mindspore.ops as ops
import numpy as np
import pytest
import torch
import torch_dcn

from solov2.models.dcn import DeformConv2d, resolve_impl

# (kind, cin, cout, k, stride, groups, H, W)
SHAPES = [("DCNv2", 16, 12, 3, 1, 1, 11, 13), ("DCN", 16, 12, 3, 2, 1, 12, 15), ("DCNv2", 16, 8, 3, 2, 4, 10, 9),
          ("DCNv2", 8, 6, 1, 1, 1, 7, 9)]


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def make_pair(kind, cin, cout, k, stride, groups, impl, seed=0, swap_xy=False):
    """Our cell and the torch reference with the same random weights (offset conv scaled for 1-3 pixel offsets)."""
    rng = np.random.default_rng(seed)
    ref = torch_dcn.DeformConvPack(cin, cout, k, stride, k // 2, groups, modulated=kind == "DCNv2", swap_xy=swap_xy)
    w = rng.standard_normal(ref.weight.shape).astype(np.float32) / np.sqrt(cin * k * k / groups)
    ow = rng.standard_normal(ref.conv_offset.weight.shape).astype(np.float32) / np.sqrt(cin * k * k)
    ob = 1.5 * rng.standard_normal(ref.conv_offset.bias.shape).astype(np.float32)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref.conv_offset.weight.copy_(torch.from_numpy(ow))
        ref.conv_offset.bias.copy_(torch.from_numpy(ob))
    ours = DeformConv2d(cin, cout, k, kind=kind, stride=stride, padding=k // 2, groups=groups, weight_init="zeros",
                        impl=impl)
    for p, v in ((ours.weight, w), (ours.conv_offset.weight, ow), (ours.conv_offset.bias, ob)):
        p.set_data(ms.Tensor(v))
    return ours, ref.double()


class WeightedSum(ms.nn.Cell):
    """sum(net(x) * g): a scalar whose gradient is the vector-Jacobian product with g."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x, g):
        return (self.net(x) * g).sum()


def image(n, c, h, w, seed=1):
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32) * 2


@pytest.mark.parametrize("impl", ["native", "gather"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}-k{s[3]}-s{s[4]}-g{s[5]}")
def test_forward_matches_torch(ms_mode, shape, impl):
    kind, cin, cout, k, stride, groups, h, w = shape
    ours, ref = make_pair(kind, cin, cout, k, stride, groups, impl)
    x = image(2, cin, h, w)
    off = ref.conv_offset(torch.from_numpy(x).double()).detach().numpy()
    assert np.abs(off[:, :2 * k * k]).max() > 3                              # offsets reach several pixels
    if kind == "DCNv2":
        m = 1 / (1 + np.exp(-off[:, 2 * k * k:]))
        assert np.mean(np.abs(m - 0.5) > 0.2) > 0.5                          # masks away from 0.5
    expected = ref(torch.from_numpy(x).double()).detach().numpy()
    got = ours(ms.Tensor(x)).asnumpy()
    assert got.shape == expected.shape
    assert rel(got, expected) < 1e-5, rel(got, expected)


@pytest.mark.parametrize("impl", ["native", "gather"])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: f"{s[0]}-s{s[4]}-g{s[5]}")
def test_gradients_match_torch(ms_mode, shape, impl):
    """d(sum(out * g))/d(input, weight, conv_offset.weight, conv_offset.bias) vs torch autograd (float64)."""
    kind, cin, cout, k, stride, groups, h, w = shape
    ours, ref = make_pair(kind, cin, cout, k, stride, groups, impl)
    x = image(2, cin, h, w)
    xt = torch.from_numpy(x).double().requires_grad_(True)
    out = ref(xt)
    g = np.random.default_rng(2).standard_normal(out.shape).astype(np.float32)
    (out * torch.from_numpy(g).double()).sum().backward()
    expected = [xt.grad.numpy(), ref.weight.grad.numpy(), ref.conv_offset.weight.grad.numpy(),
                ref.conv_offset.bias.grad.numpy()]

    params = [ours.weight, ours.conv_offset.weight, ours.conv_offset.bias]
    gx, gw = ops.grad(WeightedSum(ours), grad_position=0, weights=params)(ms.Tensor(x), ms.Tensor(g))
    for name, a, b in zip(("input", "weight", "offset.weight", "offset.bias"), [gx, *gw], expected):
        assert rel(a.asnumpy(), b) < 1e-4, (name, rel(a.asnumpy(), b))


def test_swapped_offset_layout_fails(ms_mode):
    """A reference reading channel 2k as dx (torchvision/MindSpore confusion) disagrees by O(1): the tests above
    would catch that mistake in our cell."""
    ours, ref = make_pair("DCNv2", 16, 12, 3, 1, 1, "gather")
    _, swapped = make_pair("DCNv2", 16, 12, 3, 1, 1, "gather", swap_xy=True)
    x = image(2, 16, 11, 13)
    got = ours(ms.Tensor(x)).asnumpy()
    assert rel(got, ref(torch.from_numpy(x).double()).detach().numpy()) < 1e-5
    assert rel(got, swapped(torch.from_numpy(x).double()).detach().numpy()) > 0.1


@pytest.mark.parametrize("impl", ["native", "gather"])
def test_float16_mixed_precision(ms_mode, impl):
    """Under AMP (the cell in float16) both implementations run and stay within float16 rounding of the torch
    reference; 2 x 40 x 40 = 3200 sampled rows, more than float16 counts exactly (2048), so the gather path's flat
    indices must be integers."""
    ours, ref = make_pair("DCNv2", 8, 8, 3, 1, 1, impl)
    x = image(2, 8, 40, 40)
    want = ref(torch.from_numpy(x).double()).detach().numpy()
    run = ours.to_float(ms.float16)
    got = (ms.jit(run.construct) if ms_mode == "graph" else run)(ms.Tensor(x)).asnumpy().astype(np.float32)
    assert rel(got, want) < 3e-2, rel(got, want)       # measured 1.7e-2 (float16 offsets and sampling)


@pytest.mark.parametrize("impl", ["native", "gather"])
def test_zero_offsets_are_a_plain_convolution(ms_mode, impl):
    """Untrained (conv_offset zero, mmcv init): DCNv1 = conv, DCNv2 = conv * sigmoid(0) = conv / 2."""
    rng = np.random.default_rng(3)
    x, w = image(1, 8, 9, 10), rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    plain = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1).numpy()
    for kind, scale in (("DCN", 1.0), ("DCNv2", 0.5)):
        cell = DeformConv2d(8, 6, 3, kind=kind, stride=2, padding=1, weight_init="zeros", impl=impl)
        cell.weight.set_data(ms.Tensor(w))
        assert rel(cell(ms.Tensor(x)).asnumpy(), scale * plain) < 1e-5


def test_gather_dynamic_shapes_one_graph():
    """GRAPH mode with unknown H, W: 'gather' runs two input sizes through one compiled cell, both right ('native'
    cannot: MindSpore's operator needs static H, W, so SOLOv2Eval keeps static shapes for it, tested below)."""
    from conftest import in_mode
    ours, ref = make_pair("DCNv2", 8, 8, 3, 2, 1, "gather")
    with in_mode("graph"):
        ours.set_inputs(ms.Tensor(shape=[None, 8, None, None], dtype=ms.float32))
        for h, w in ((9, 12), (14, 7)):
            x = image(1, 8, h, w)
            assert rel(ours(ms.Tensor(x)).asnumpy(), ref(torch.from_numpy(x).double()).detach().numpy()) < 1e-5


def test_implementation_choice(monkeypatch):
    monkeypatch.delenv("SOLOV2_DCN_IMPL", raising=False)
    assert resolve_impl("auto") == "native" and resolve_impl("gather") == "gather"
    monkeypatch.setenv("SOLOV2_DCN_IMPL", "gather")
    assert resolve_impl("auto") == "gather"
    monkeypatch.setenv("SOLOV2_DCN_IMPL", "fast")
    with pytest.raises(ValueError, match="SOLOV2_DCN_IMPL"):
        resolve_impl("auto")


def test_native_dcn_model_infers_at_static_shapes(monkeypatch):
    """SOLOv2Eval(dynamic_shape=True) declares unknown H, W only for nets without native deformable convs."""
    from conftest import REPO
    from solov2.config import load_config
    from solov2.models.solov2 import SOLOv2Eval, build_model
    monkeypatch.delenv("SOLOV2_DCN_IMPL", raising=False)
    cfg = load_config(REPO / "configs" / "solov2" / "solov2_light_512_dcn_r50_fpn_8gpu_3x.py")
    native, gather = build_model(cfg), build_model(cfg, dcn_impl="gather")
    assert native.static_only and not gather.static_only
    assert SOLOv2Eval(native, dynamic_shape=True).get_inputs() is None
    assert SOLOv2Eval(gather, dynamic_shape=True).get_inputs() is not None
