"""Mixed precision for training: which cells run in float16, and the loss scaler (see README "Mixed precision").

The levels, on `mindspore.amp`:
  O0  float32 everywhere (the default, and what the parity tests check).
  O1  operator lists (MindSpore's amp_level 'auto'): convolutions and matmuls in float16, normalisations,
      reductions, exp/log and the like in float32, the rest in its inputs' type. MindSpore's own 'O1' rewrites the
      network's Python source and cannot parse this model, so 'auto' is the operator-level equivalent.
  O2  every cell in float16 except BatchNorm, LayerNorm and GroupNorm (MindSpore 2.10's O2 black list lacks
      GroupNorm: it would run in float16, whose statistics lose precision and overflow); as mmdetection's fp16.
  O3  every cell in float16, the norm layers too (MindSpore's O3).
In every level the parameters and the optimizer state stay float32, and the losses (dice, focal) compute in
float32: `solov2.engine.train_step.make_loss_fn` casts the network outputs first (at O1 they come in the type of
their last operator).
"""
from typing import Optional

import mindspore as ms
import mindspore.nn as nn

from solov2.config import AmpConfig


def mixed_precision(net: nn.Cell, level: str) -> nn.Cell:
    """The cell to train: `net` itself at O0, else `net` under MindSpore's mixed precision (same Parameter objects,
    same names; MindSpore marks the cells' precision in place). Returns outputs as float32 at O2/O3, at O1 in the
    type of the last operator (the loss casts)."""
    if level == "O0":
        return net
    if level == "O1":
        return ms.amp.auto_mixed_precision(net, "auto")
    if level == "O2":
        return ms.amp.custom_mixed_precision(net, black_list=ms.amp.get_black_list() + [nn.GroupNorm])
    if level == "O3":
        return ms.amp.auto_mixed_precision(net, "O3")
    raise ValueError(f"amp level must be O0, O1, O2 or O3, got {level!r}")


def make_loss_scaler(amp: AmpConfig) -> Optional[ms.amp.LossScaler]:
    """None (no loss scaling), a StaticLossScaler or a DynamicLossScaler as `amp` says.

    The scaler's state is two Parameters, `scale_value` (float32) and, when dynamic, `counter` (int32: finite
    steps since the last change); `scaler_state` / `restore_scaler` carry them through snapshots.
    """
    if amp.loss_scale is None:
        return None
    if amp.loss_scale == "static":
        return ms.amp.StaticLossScaler(scale_value=amp.init_scale)
    return ms.amp.DynamicLossScaler(scale_value=amp.init_scale, scale_factor=amp.scale_factor,
                                    scale_window=amp.scale_window)


SCALER_KEYS = ("loss_scale.scale_value", "loss_scale.counter")


def _is_dynamic(scaler) -> bool:
    return isinstance(scaler, ms.amp.DynamicLossScaler)


def scaler_state(scaler) -> dict:
    """{snapshot key: Tensor} of a dynamic loss scaler: scale_value float32 (), counter int32 (); a static scale
    is a setting, read from the config on resume, so it is stored alone (for the record) and None stores nothing."""
    if scaler is None:
        return {}
    state = {SCALER_KEYS[0]: scaler.scale_value.value()}
    if _is_dynamic(scaler):
        state[SCALER_KEYS[1]] = scaler.counter.value()
    return state


def restore_scaler(scaler, state: dict) -> str:
    """Continue a loss scaler from the snapshot entries `state` (see `scaler_state`); returns what happened:

    'restored' (dynamic into dynamic), 'config' (a static scaler: the config's scale holds), 'missing' (a dynamic
    scaler, but the snapshot's run had none or a static one: the initial scale holds), 'dropped' (no scaler, the
    snapshot's run had one), 'none' (neither has one).
    """
    if scaler is None:
        return "dropped" if state else "none"
    if not _is_dynamic(scaler):
        return "config"
    if SCALER_KEYS[1] not in state:
        return "missing"
    # before the first step: set_data on a Parameter a compiled graph already holds may not reach that graph
    scaler.scale_value.set_data(ms.Tensor(state[SCALER_KEYS[0]].asnumpy().reshape(()), ms.float32))
    scaler.counter.set_data(ms.Tensor(state[SCALER_KEYS[1]].asnumpy().reshape(()), ms.int32))
    return "restored"


def scale_of(scaler) -> float:
    """The current loss scale (1.0 without a scaler)."""
    return 1.0 if scaler is None else float(scaler.scale_value.asnumpy())
