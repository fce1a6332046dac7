"""Snapshots: a resume with another model's snapshot says which parameter differs and why (no MindSpore error)."""
import mindspore as ms
import numpy as np
import pytest

from solov2.errors import SolovError
from solov2.engine.snapshot import load_snapshot, save_snapshot


class Net(ms.nn.Cell):
    def __init__(self, channels):
        super().__init__()
        self.head = ms.Parameter(ms.Tensor(np.ones((channels, 3), np.float32)), name="bbox_head.solo_kernel.weight")
        self.other = ms.Parameter(ms.Tensor(np.zeros((2,), np.float32)), name="neck.bias")

    def construct(self, x):
        return x


def sgd(net):
    return ms.nn.SGD(net.trainable_params(), learning_rate=0.1, momentum=0.9)


def test_resume_with_other_shapes_names_the_parameter(tmp_path):
    net = Net(4)
    save_snapshot(tmp_path / "epoch_1.ckpt", net, sgd(net), epoch=1, seed=0)
    other = Net(8)  # e.g. seg_feat_channels changed in the config since the snapshot
    with pytest.raises(SolovError, match=r"epoch_1\.ckpt: \d parameter shape\(s\) differ .* "
                                         r"bbox_head\.solo_kernel\.weight: snapshot \(4, 3\) vs model \(8, 3\)"):
        load_snapshot(tmp_path / "epoch_1.ckpt", other, sgd(other))
    same = Net(4)
    assert load_snapshot(tmp_path / "epoch_1.ckpt", same, sgd(same))["epoch"] == 1


def test_the_best_value_survives_a_snapshot_exactly(tmp_path):
    """The best AP so far travels in every snapshot; stored as float32 it came back rounded, and the resumed run
    took an equal AP for a better one."""
    from solov2.engine.snapshot import read_counters
    from solov2.engine.validation import best_entries, best_from_counters
    ap = 0.33669999999
    assert float(np.float32(ap)) != ap
    net = Net(4)
    save_snapshot(tmp_path / "epoch_3.ckpt", net, sgd(net), epoch=3, seed=0, extra=best_entries("segm_mAP", (ap, 2)))
    assert best_from_counters("segm_mAP", read_counters(tmp_path / "epoch_3.ckpt")) == (ap, 2)
