"""Mixed precision: the config keys, which cells run in float16, the loss-scaled step (overflow skip), AMP resume."""
import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest
from conftest import NORM, SHARED, TRASHCAN_CFG, in_mode

from solov2.config import ConfigError, load_config
from solov2.data.coco import CocoDataset
from solov2.data.train_transforms import collate, train_transform
from solov2.engine.amp import make_loss_scaler, mixed_precision, scale_of
from solov2.engine.optim import make_optimizer
from solov2.engine.train_step import make_loss_fn, make_train_step, to_tensors
from solov2.models.solov2 import build_model

DATA = SHARED / "datasets" / "trashcan_mini"


def small_batch(cfg, images=2):
    """The first `images` trashcan_mini training images at scale (256, 160), no flip: the step's six tensors."""
    ds = CocoDataset(DATA / "annotations" / "instances_train_trashcan.json", DATA / "train", max_images=images)
    samples = [train_transform(ds[i], np.random.RandomState(0), scales=[(256, 160)], flip_ratio=0.0, **NORM)
               for i in range(images)]
    h = cfg.head
    return to_tensors(collate(samples, scale_ranges=h.scale_ranges, num_grids=h.num_grids, sigma=h.sigma,
                              max_pos=128))


@pytest.mark.parametrize("overrides, want", [
    ([], ("O0", None, 2.0 ** 16, 2, 2000)),
    (["amp_level=O2"], ("O2", "dynamic", 2.0 ** 16, 2, 2000)),                 # --amp O2: MindSpore's defaults
    (["fp16.loss_scale=512."], ("O2", "static", 512.0, 2, 1000)),             # mmdetection 1.x: fp16 means O2
    (["fp16.loss_scale=dynamic", "amp_level=O3"], ("O3", "dynamic", 2.0 ** 32, 2, 1000)),   # mmcv's 'dynamic'
    (["fp16.loss_scale={'init_scale': 1024., 'scale_window': 4}"], ("O2", "dynamic", 1024.0, 2, 4)),
    (["fp16.loss_scale=512.", "amp_level=O0"], ("O0", None, 2.0 ** 16, 2, 2000)),
])
def test_amp_settings_from_config(overrides, want):
    a = load_config(TRASHCAN_CFG, overrides).amp
    assert (a.level, a.loss_scale, a.init_scale, a.scale_factor, a.scale_window) == want
    scaler = make_loss_scaler(a)
    assert (scaler is None) == (want[1] is None)
    if scaler is not None:
        assert scale_of(scaler) == want[2] and isinstance(scaler, ms.amp.DynamicLossScaler) == (want[1] == "dynamic")


def test_an_mmdetection_fp16_section_in_the_file_is_honoured(tmp_path):
    """mmdetection 1.x configs say `fp16 = dict(loss_scale=512.)` at the top level: O2 with a static scale."""
    cfg = tmp_path / "with_fp16.py"
    for section in ("fp16 = dict(loss_scale=512.)", "fp16 = dict()"):    # mmcv's default scale is 512 too
        cfg.write_text(TRASHCAN_CFG.read_text() + f"\n{section}\n")
        a = load_config(cfg).amp
        assert (a.level, a.loss_scale, a.init_scale) == ("O2", "static", 512.0), section
        assert isinstance(make_loss_scaler(a), ms.amp.StaticLossScaler)


@pytest.mark.parametrize("override, msg", [
    ("fp16.loss_scale=0.5", "fp16.loss_scale: must be a finite number >= 1, got 0.5"),
    ("fp16.loss_scale=1e400", "fp16.loss_scale: must be a finite number >= 1, got inf"),
    ("fp16.loss_scale={'init_scale': 0.5}", "fp16.loss_scale.init_scale: must be a finite number >= 1, got 0.5"),
    ("fp16.loss_scale=auto", "fp16.loss_scale: must be a number, 'dynamic' or dict("),
    ("fp16.loss_scale={'scale_factor': 1.5}", "fp16.loss_scale.scale_factor: must be an integer >= 2"),
    ("fp16.loss_scale={'scale_windo': 4}", "fp16.loss_scale.scale_windo: unknown setting (did you mean 'scal"),
])
@pytest.mark.parametrize("level", [[], ["amp_level=O0"]])     # checked even where O0 does not use it
def test_bad_amp_settings_name_the_key(override, msg, level):
    with pytest.raises(ConfigError) as e:
        load_config(TRASHCAN_CFG, [override] + level)
    assert str(e.value).startswith(str(TRASHCAN_CFG)) and msg in str(e.value), str(e.value)


def test_unknown_amp_level_is_refused():
    with pytest.raises(ConfigError, match="amp_level: 'O4' is not supported by this port \\(supported: 'O0', 'O1'"):
        load_config(TRASHCAN_CFG, ["amp_level=O4"])


def test_resume_continues_a_dynamic_scale_and_keeps_a_static_one_from_the_config():
    from solov2.engine.amp import restore_scaler, scaler_state
    dynamic = ms.amp.DynamicLossScaler(scale_value=2.0 ** 16, scale_factor=2, scale_window=3)
    dynamic.adjust(ms.Tensor(False))                                          # one overflow: 2**15
    dynamic.adjust(ms.Tensor(True))                                           # counter 1
    saved = {k: ms.Tensor(v.asnumpy()) for k, v in scaler_state(dynamic).items()}
    assert {k: v.asnumpy().tolist() for k, v in saved.items()} == {"loss_scale.scale_value": 2.0 ** 15,
                                                                    "loss_scale.counter": 1}
    fresh = ms.amp.DynamicLossScaler(scale_value=2.0 ** 16, scale_factor=2, scale_window=3)
    assert restore_scaler(fresh, saved) == "restored"
    assert scale_of(fresh) == 2.0 ** 15 and int(fresh.counter.asnumpy()) == 1
    static = ms.amp.StaticLossScaler(scale_value=128.0)                       # the config now says 128
    assert restore_scaler(static, saved) == "config" and scale_of(static) == 128.0
    from_static = scaler_state(ms.amp.StaticLossScaler(scale_value=512.0))
    assert restore_scaler(fresh, from_static) == "missing"
    assert restore_scaler(None, saved) == "dropped" and restore_scaler(None, {}) == "none"


def norm_and_conv_dtypes(net, x):
    """{cell type: set of output dtypes} of the GroupNorm, BatchNorm2d and Conv2d cells (PYNATIVE hooks)."""
    seen, handles = {}, []
    for _, cell in net.cells_and_names():
        if isinstance(cell, (nn.GroupNorm, nn.BatchNorm2d, nn.Conv2d)):
            def hook(c, inputs, out):
                seen.setdefault(type(c).__name__, set()).add(out.dtype)
            handles.append(cell.register_forward_hook(hook))
    out = net(x)
    for h in handles:
        h.remove()
    return seen, out


@pytest.mark.parametrize("level, norms", [("O1", ms.float32), ("O2", ms.float32), ("O3", ms.float16)])
def test_which_cells_run_in_float16(level, norms):
    """Convolutions run in float16 at every level (at O1 the biased ones add their bias in float32); GroupNorm and BatchNorm compute in float32 at O1 and O2 (the
    O2 black list gains GroupNorm) and in float16 only at O3; parameters and the losses stay float32."""
    cfg = load_config(TRASHCAN_CFG)
    ms.set_seed(0)
    net = build_model(cfg)
    net.set_train(True)
    batch = small_batch(cfg)
    with in_mode("pynative"):
        amp_net = mixed_precision(net, level)
        seen, out = norm_and_conv_dtypes(amp_net, batch[0])
        assert seen["GroupNorm"] == seen["BatchNorm2d"] == {norms}, seen
        if level == "O1":     # operator level: a conv with a bias ends in BiasAdd, which promotes to float32
            assert ms.float16 in seen["Conv2d"], seen
        else:
            assert seen["Conv2d"] == {ms.float16} and {o.dtype for o in out} == {ms.float32}, seen
        losses = make_loss_fn(amp_net, cfg.head)(*batch)
    assert {t.dtype for t in losses} == {ms.float32}
    assert {p.dtype for p in net.get_parameters()} == {ms.float32}


def test_o2_outputs_are_close_to_float32_in_graph_mode():
    """GRAPH mode: the O2 network is within float16 rounding of the float32 one, and not equal to it."""
    cfg = load_config(TRASHCAN_CFG)
    ms.set_seed(0)
    net = build_model(cfg)
    img = small_batch(cfg)[0]
    with in_mode("graph"):
        want = [o.asnumpy() for o in ms.jit(net.construct)(img)]
        got = [o.asnumpy() for o in ms.jit(mixed_precision(net, "O2").construct)(img)]
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        err = np.abs(g - w).max() / np.abs(w).max()
        assert 0 < err < 2e-2, err


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_amp_step_skips_an_overflow_then_learns(ms_mode, level):
    """One loss-scaled step function: a batch with pixels at 1e5 (float16 saturates at 65504) keeps a finite loss
    but overflows the scaled float16 backward, so the update is skipped (weights and momenta untouched, the
    iteration still counted) and the dynamic scale halves; normal batches then update, and the loss goes down."""
    cfg = load_config(TRASHCAN_CFG, ["optimizer.lr=0.002", "lr_config.warmup=None"])
    ms.set_seed(0)
    net = build_model(cfg)
    net.set_train(True)
    opt = make_optimizer(net, cfg.optim, 8, 1)
    scaler = ms.amp.DynamicLossScaler(2.0 ** 12, 2, 2000)
    step = make_train_step(mixed_precision(net, level), opt, head=cfg.head, grad_clip=cfg.optim.grad_clip, world=1,
                           jit=ms_mode == "graph", scaler=scaler)
    batch = small_batch(cfg, images=1)
    img = batch[0].asnumpy().copy()
    img[:, :, :8, :8] = 1e5
    before = {p.name: p.asnumpy().copy() for p in opt.get_parameters()}
    loss, _, _, finite = step(ms.Tensor(img), *batch[1:])
    assert np.isfinite(float(loss.asnumpy())) and not bool(finite.asnumpy())   # what train.py skips, not stops on
    assert scale_of(scaler) == 2.0 ** 11
    assert int(opt.global_step.asnumpy()[0]) == 1
    for p in opt.get_parameters():
        if p.name != "global_step":
            np.testing.assert_array_equal(p.asnumpy(), before[p.name], err_msg=p.name)
    totals, cates = [], []
    for _ in range(3):
        loss, _, loss_cate, finite = step(*batch)
        assert bool(finite.asnumpy()) and np.isfinite(float(loss.asnumpy()))
        totals.append(float(loss.asnumpy()))
        cates.append(float(loss_cate.asnumpy()))
    assert int(opt.global_step.asnumpy()[0]) == 4 and scale_of(scaler) == 2.0 ** 11
    assert cates[-1] < cates[0] and totals[-1] < totals[0], (cates, totals)   # measured: 1.01 -> 0.79 (focal)
    assert {p.dtype for p in opt.get_parameters() if p.name != "global_step"} == {ms.float32}
    moved = sum(not np.array_equal(p.asnumpy(), before[p.name]) for p in opt.parameters)
    assert moved > len(opt.parameters) // 2
