"""MindSpore SOLOv2 losses vs the official fixture and a PyTorch transcription of the official loss."""

import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore import Tensor, nn

from solov2.models.losses import dice_loss, sigmoid_focal_loss, solov2_loss
from solov2.data.targets import pack_targets
from conftest import SHARED

FIX = SHARED / "fixtures" / "reference" / "train_trashcan_batch2.npz"
LOSS_CATE_REF = 8.857595443725586  # fixture json "losses.loss_cate"


class FocalCell(nn.Cell):
    def construct(self, logits, labels, avg):
        return sigmoid_focal_loss(logits, labels) / avg


class LossCell(nn.Cell):
    """Compiled as a graph under GRAPH_MODE, run op by op under PYNATIVE_MODE."""

    def construct(self, cate_logits, kernels, mask_feat, cate_target, pos_cell, pos_mask, pos_valid, num_ins):
        loss_ins, loss_cate = solov2_loss(cate_logits, kernels, mask_feat, cate_target, pos_cell, pos_mask,
                                          pos_valid, num_ins)
        return loss_ins + loss_cate, loss_ins, loss_cate


def _torch_focal_sum(x, labels, gamma=2.0, alpha=0.25):
    """Line-by-line transcription of the official CUDA SigmoidFocalLossForward (labels 0 = bg, l -> col l-1)."""
    c = x.shape[1]
    t = labels[:, None]
    d = torch.arange(c)[None]
    p = torch.sigmoid(x)
    term1 = (1 - p) ** gamma * torch.log(torch.clamp(p, min=torch.finfo(torch.float32).tiny))
    term2 = p ** gamma * (-1. * x * (x >= 0) - torch.log(1. + torch.exp(x - 2. * x * (x >= 0))))
    pos, neg = (t == d + 1).float(), ((t >= 0) & (t != d + 1)).float()
    return (-pos * term1 * alpha - neg * term2 * (1 - alpha)).sum()


def _torch_dice(inp, target):
    """Official dice_loss (input already sigmoided)."""
    inp = inp.contiguous().view(inp.size()[0], -1)
    target = target.contiguous().view(target.size()[0], -1).float()
    a = torch.sum(inp * target, 1)
    b = torch.sum(inp * inp, 1) + 0.001
    c = torch.sum(target * target, 1) + 0.001
    return 1 - (2 * a) / (b + c)


def test_focal_loss_fixture(ms_mode):
    assert FIX.is_file(), f"missing fixture {FIX} (set SOLOV2_SHARED)"
    z = np.load(FIX)
    logits = np.concatenate([z[f"train_cate_logits_l{l}"].transpose(0, 2, 3, 1).reshape(2, -1, 22)
                             for l in range(5)], axis=1).reshape(-1, 22)
    labels = np.stack([np.concatenate([z[f"cate_label_{i}_l{l}"].reshape(-1) for l in range(5)])
                       for i in range(2)]).reshape(-1).astype(np.int32)
    num_ins = sum(int(z[f"ins_ind_label_{i}_l{l}"].sum()) for i in range(2) for l in range(5))
    assert num_ins == 117
    v = float(FocalCell()(Tensor(logits), Tensor(labels), Tensor(np.float32(num_ins + 1))).asnumpy())
    assert abs(v - LOSS_CATE_REF) <= 1e-5 * LOSS_CATE_REF
    assert abs(v - float(z["loss_cate"])) <= 1e-5 * LOSS_CATE_REF


def test_focal_loss_random_vs_torch():
    rng = np.random.RandomState(0)
    x = (rng.randn(300, 7) * 20).astype(np.float32)  # wide range incl. |x| > 40
    labels = rng.randint(-1, 8, size=300).astype(np.int32)  # -1 rows are ignored by the CUDA kernel too
    got = float(sigmoid_focal_loss(Tensor(x), Tensor(labels)).asnumpy())
    ref = float(_torch_focal_sum(torch.from_numpy(x), torch.from_numpy(labels).long()))
    assert abs(got - ref) <= 1e-5 * abs(ref)


def test_dice_loss_vs_official():
    rng = np.random.RandomState(1)
    logits = (rng.randn(6, 9, 11) * 3).astype(np.float32)
    target = (rng.rand(6, 9, 11) < 0.3).astype(np.uint8)
    target[2] = 0
    valid = np.array([1, 1, 1, 0, 1, 1], np.float32)
    got = dice_loss(Tensor(logits), Tensor(target), Tensor(valid)).asnumpy()
    ref = _torch_dice(torch.sigmoid(torch.from_numpy(logits)), torch.from_numpy(target)).numpy()
    np.testing.assert_allclose(got, ref * valid, rtol=0, atol=1e-6)
    assert got[3] == 0 and ref[3] > 0.1


def _random_case(rng, n, grids, e, h4, w4, c, max_pos, dup, empty=False):
    """Random head outputs + per-level targets -> (torch reference losses, packed MindSpore inputs)."""
    cate_preds = [rng.randn(n, c, s, s).astype(np.float32) * 2 for s in grids]
    kernel_preds = [rng.randn(n, e, s, s).astype(np.float32) * 0.3 for s in grids]
    mask_feat = np.abs(rng.randn(n, e, h4, w4)).astype(np.float32)
    per_img = []  # [image][level] -> (cate_label, ind, order, ins)
    for _ in range(n):
        levels = []
        for s in grids:
            k = 0 if empty else rng.randint(0, 5)
            order = rng.choice(s * s, size=k, replace=False)
            if dup and k:
                order = np.concatenate([order, order[:1]])  # duplicated cell, as overlapping instances give
            cate = np.zeros((s, s), np.int64)
            cate.reshape(-1)[order] = rng.randint(1, c + 1, size=len(order))
            ind = np.zeros(s * s, bool)
            ind[order] = True
            ins = (rng.rand(len(order), h4, w4) < 0.3).astype(np.uint8)
            levels.append((cate, ind, order.astype(np.int64), ins))
        per_img.append(levels)
    # --- official per-level loss (solov2_head.py L184-269) in torch
    ins_pred = torch.from_numpy(mask_feat)
    ins_pred_list, ins_labels = [], []
    for l in range(len(grids)):
        preds, labs = [], []
        for i in range(n):
            order = torch.from_numpy(per_img[i][l][2])
            kp = torch.from_numpy(kernel_preds[l][i]).view(e, -1)[:, order]
            if kp.size()[-1] == 0:
                continue
            kp = kp.permute(1, 0).view(kp.shape[1], -1, 1, 1)
            preds.append(F.conv2d(ins_pred[i].unsqueeze(0), kp, stride=1).view(-1, h4, w4))
            labs.append(torch.from_numpy(per_img[i][l][3]))
        ins_pred_list.append(torch.cat(preds) if preds else None)
        ins_labels.append(torch.cat(labs) if labs else None)
    num_ins = sum(int(per_img[i][l][1].sum()) for i in range(n) for l in range(len(grids)))
    dices = [_torch_dice(torch.sigmoid(p), t) for p, t in zip(ins_pred_list, ins_labels) if p is not None]
    ref_ins = float(torch.cat(dices).mean() * 3.0) if dices else None
    flat_labels = torch.cat([torch.from_numpy(per_img[i][l][0]).flatten()
                             for l in range(len(grids)) for i in range(n)])
    flat_preds = torch.cat([torch.from_numpy(p).permute(0, 2, 3, 1).reshape(-1, c) for p in cate_preds])
    ref_cate = float(_torch_focal_sum(flat_preds, flat_labels) / (num_ins + 1))
    # --- packed static inputs
    packs = [pack_targets(*[[lv[j] for lv in per_img[i]] for j in range(4)], max_pos=max_pos) for i in range(n)]
    cat = lambda arrs: np.concatenate(arrs, axis=1)  # noqa: E731
    inputs = dict(
        cate_logits=cat([p.transpose(0, 2, 3, 1).reshape(n, -1, c) for p in cate_preds]),
        kernels=cat([k.transpose(0, 2, 3, 1).reshape(n, -1, e) for k in kernel_preds]),
        mask_feat=mask_feat,
        **{k: np.stack([p[k] for p in packs]) for k in ("cate_target", "pos_cell", "pos_mask", "pos_valid")},
        num_ins=np.float32(sum(p["num_pos_cells"] for p in packs)))
    assert inputs["num_ins"] == num_ins
    return ref_ins, ref_cate, inputs, (cate_preds, kernel_preds, per_img)


def _run(inputs):
    args = [Tensor(inputs[k]) for k in ("cate_logits", "kernels", "mask_feat", "cate_target", "pos_cell",
                                        "pos_mask", "pos_valid", "num_ins")]
    _, loss_ins, loss_cate = LossCell()(*args)
    return float(loss_ins.asnumpy()), float(loss_cate.asnumpy())


@pytest.mark.parametrize("dup", [False, True], ids=["unique", "duplicated"])
def test_solov2_loss_vs_torch(ms_mode, dup):
    rng = np.random.RandomState(7 + dup)
    ref_ins, ref_cate, inputs, (_, _, per_img) = _random_case(rng, n=2, grids=(6, 4, 3), e=8, h4=10, w4=12, c=5,
                                                              max_pos=40, dup=dup)
    n_dup = sum(len(lv[2]) - len(np.unique(lv[2])) for levels in per_img for lv in levels)
    assert (n_dup > 0) == dup
    assert (inputs["pos_valid"] == 0).any(), "case must contain padding rows"
    got_ins, got_cate = _run(inputs)
    assert abs(got_ins - ref_ins) <= 1e-5 * abs(ref_ins)
    assert abs(got_cate - ref_cate) <= 1e-5 * abs(ref_cate)


def test_solov2_loss_no_positives(ms_mode):
    rng = np.random.RandomState(3)
    _, ref_cate, inputs, _ = _random_case(rng, n=2, grids=(4, 3), e=4, h4=6, w4=8, c=3, max_pos=6, dup=False,
                                          empty=True)
    assert inputs["pos_valid"].sum() == 0 and inputs["num_ins"] == 0
    got_ins, got_cate = _run(inputs)
    assert got_ins == 0.0 and np.isfinite(got_cate)
    assert abs(got_cate - ref_cate) <= 1e-5 * abs(ref_cate)


def test_solov2_loss_gradients_vs_torch(ms_mode):
    rng = np.random.RandomState(11)
    _, _, inputs, (cate_preds, kernel_preds, per_img) = _random_case(rng, n=2, grids=(5, 3), e=6, h4=8, w4=8, c=4,
                                                                     max_pos=30, dup=True)
    names = ("cate_logits", "kernels", "mask_feat", "cate_target", "pos_cell", "pos_mask", "pos_valid", "num_ins")
    grad_fn = ms.value_and_grad(LossCell(), grad_position=(0, 1, 2), has_aux=True)
    (total, _, _), grads = grad_fn(*[Tensor(inputs[k]) for k in names])
    assert np.isfinite(float(total.asnumpy()))
    # reference gradients: autograd of the same packed formulation written in torch
    t = {k: torch.from_numpy(np.asarray(inputs[k])) for k in names}
    for k in ("cate_logits", "kernels", "mask_feat"):
        t[k].requires_grad_(True)
    n, p = t["pos_cell"].shape
    k_g = torch.stack([t["kernels"][i][t["pos_cell"][i].long()] for i in range(n)])
    logits = torch.bmm(k_g, t["mask_feat"].reshape(n, t["mask_feat"].shape[1], -1))
    dice = _torch_dice(torch.sigmoid(logits.reshape(n * p, -1)), t["pos_mask"].reshape(n * p, -1))
    valid = t["pos_valid"].reshape(-1)
    loss = 3.0 * (dice * valid).sum() / valid.sum().clamp(min=1)
    loss = loss + _torch_focal_sum(t["cate_logits"].reshape(-1, t["cate_logits"].shape[-1]),
                                   t["cate_target"].reshape(-1).long()) / (t["num_ins"] + 1)
    loss.backward()
    assert abs(float(total.asnumpy()) - loss.item()) <= 1e-5 * loss.item()
    for g, k in zip(grads, ("cate_logits", "kernels", "mask_feat")):
        ref = t[k].grad.numpy()
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(g.asnumpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
