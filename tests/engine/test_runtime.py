"""Ascend precision modes: what `set_runtime` asks of MindSpore per mode, and each command's default."""
import pytest


def test_precision_modes_set_the_ascend_operator_precision(monkeypatch):
    """'parity' switches CANN's default FP32->HF32 off for convolutions and matmuls, 'fast' on; both keep the
    graph's dtypes (must_keep_origin_dtype). There is no Ascend here, so the MindSpore setters are recorded."""
    from mindspore.device_context.ascend import op_precision
    from solov2.engine.runtime import set_ascend_precision
    for precision, hf32 in (("parity", False), ("fast", True)):
        calls = []
        for name in ("precision_mode", "conv_allow_hf32", "matmul_allow_hf32"):
            monkeypatch.setattr(op_precision, name, lambda v, name=name: calls.append((name, v)))
        set_ascend_precision(precision)
        assert sorted(calls) == [("conv_allow_hf32", hf32), ("matmul_allow_hf32", hf32),
                                 ("precision_mode", "must_keep_origin_dtype")], (precision, calls)


def test_precision_defaults_per_command():
    """Training defaults to 'fast', inference and evaluation to 'parity'; a bad value is refused."""
    import argparse
    from solov2.cli import evaluate, train
    from solov2.cli.predict import _common
    from solov2.engine.runtime import set_runtime
    from solov2.errors import SolovError
    assert train.parser(False).parse_args(["c.py"]).precision == "fast"
    assert train.parser(True).parse_args(["c.py", "--precision", "parity"]).precision == "parity"
    assert evaluate.parser().parse_args(["c.py", "w.ckpt"]).precision == "parity"
    p = argparse.ArgumentParser()
    _common(p)
    assert p.parse_args([]).precision == "parity"
    with pytest.raises(SolovError, match="--precision must be 'parity' or 'fast', got 'fp16'"):
        set_runtime("CPU", "pynative", precision="fp16")
