"""Convert a PyTorch SOLOv2 checkpoint (.pth) into a MindSpore checkpoint (.ckpt) for `solov2.models`.

Three source layouts are recognised by their key names and renamed BY NAME (never by position) into the
official WXinlong/SOLO state-dict keys, then into MindSpore parameter names:

* ``official``       WXinlong/SOLO (mmdet 1.x): ``backbone.*``, ``neck.*``, ``mask_feat_head.*``, ``bbox_head.*``.
* ``mmdet3``         open-mmlab/mmdetection 2.x/3.x ``SOLOv2`` detector: the head is ``mask_head.*``
                     (``cls_convs``, ``kernel_convs``, ``conv_cls``, ``conv_kernel``, ``mask_feature_head.*``).
* ``pytorch_solov2`` OpenFirework/pytorch_solov2: ``fpn.*`` plain convs, ``nn.Sequential(conv, GN, ReLU)``
                     towers, i.e. ``.i.0.weight`` (conv) and ``.i.1.{weight,bias}`` (GN).

Official -> MindSpore: BatchNorm ``weight/bias/running_mean/running_var`` -> ``gamma/beta/moving_mean/
moving_variance``; GroupNorm (``.gn.``) ``weight/bias`` -> ``gamma/beta``; ``num_batches_tracked`` dropped.
Everything else keeps its name and its layout (conv weights stay OIHW float32).

Class names cannot live inside the .ckpt without showing up as an unused key in ``load_param_into_net``
(MindSpore 2.10 stores an ``append_dict`` string, but it is then returned as an unloaded key), so they go
to a sidecar ``DST.json`` together with the inferred architecture and the source file.
"""
import hashlib
import os
import re
from typing import Dict, List, Tuple, Union

import numpy as np

from solov2.checkpoint_arch import (check_config, config_from_arch, describe_arch,  # noqa: F401 (API)
                                    infer_arch)
from solov2.config import SOLOv2Config
from solov2.errors import SolovError, listing
from solov2.files import (atomic_write, check_not_an_input, check_writable, restored_on_failure,
                          write_json_atomic)
from solov2.torch_checkpoint import ConvertError, load_torch_checkpoint

LAYOUTS = ("official", "mmdet3", "pytorch_solov2")

# Source layout -> official key. First matching pattern wins; keys matching none keep their name (and are
# then reported as unused by the strict check if the model has no such parameter).
RENAME_RULES = {
    "official": [],
    "mmdet3": [  # mmdet/models/dense_heads/solov2_head.py: SOLOV2Head + MaskFeatModule (ConvModule: .conv/.gn)
        (r"^mask_head\.mask_feature_head\.convs_all_levels\.", "mask_feat_head.convs_all_levels."),
        (r"^mask_head\.mask_feature_head\.conv_pred\.", "mask_feat_head.conv_pred.0."),  # ConvModule, no Sequential
        (r"^mask_head\.cls_convs\.", "bbox_head.cate_convs."),
        (r"^mask_head\.kernel_convs\.", "bbox_head.kernel_convs."),
        (r"^mask_head\.conv_cls\.", "bbox_head.solo_cate."),
        (r"^mask_head\.conv_kernel\.", "bbox_head.solo_kernel."),
    ],
    "pytorch_solov2": [  # modules/solov2.py (FPN with nn.Conv2d), solov2_head.py, mask_feat_head.py
        (r"^fpn\.(lateral_convs|fpn_convs)\.(\d+)\.(weight|bias)$", r"neck.\1.\2.conv.\3"),
        (r"^(mask_feat_head\.convs_all_levels\.\d+\.conv\d+)\.0\.weight$", r"\1.conv.weight"),
        (r"^(mask_feat_head\.convs_all_levels\.\d+\.conv\d+)\.1\.(weight|bias)$", r"\1.gn.\2"),
        (r"^mask_feat_head\.conv_pred\.0\.weight$", "mask_feat_head.conv_pred.0.conv.weight"),
        (r"^mask_feat_head\.conv_pred\.1\.(weight|bias)$", r"mask_feat_head.conv_pred.0.gn.\1"),
        (r"^(bbox_head\.(?:cate|kernel)_convs\.\d+)\.0\.weight$", r"\1.conv.weight"),
        (r"^(bbox_head\.(?:cate|kernel)_convs\.\d+)\.1\.(weight|bias)$", r"\1.gn.\2"),
    ],
}

# Official key -> MindSpore name. BN modules are named explicitly (torchvision-style ResNet), GN modules are
# every `.gn` (ConvModule). Matching by a `running_var` sibling would silently miss GroupNorm.
_BN = r"backbone\.(?:bn1|layer\d+\.\d+\.(?:bn\d|downsample\.1))"
_GN = r".+\.gn"
MINDSPORE_RULES = [
    (rf"^({_BN})\.weight$", r"\1.gamma"),
    (rf"^({_BN})\.bias$", r"\1.beta"),
    (rf"^({_BN})\.running_mean$", r"\1.moving_mean"),
    (rf"^({_BN})\.running_var$", r"\1.moving_variance"),
    (rf"^({_GN})\.weight$", r"\1.gamma"),
    (rf"^({_GN})\.bias$", r"\1.beta"),
]

def detect_layout(keys: List[str], path: str = "checkpoint") -> str:
    """'official' | 'mmdet3' | 'pytorch_solov2' from distinctive top-level prefixes."""
    tops = {k.split(".", 1)[0] for k in keys}
    # mmdet names the neck `neck` and the whole head `mask_head`; pytorch_solov2 names the neck `fpn`.
    if "mask_head" in tops or "fpn" in tops:
        layout = "mmdet3" if "mask_head" in tops else "pytorch_solov2"
        clash = {"mmdet3": {"fpn", "bbox_head", "mask_feat_head"}, "pytorch_solov2": {"neck"}}[layout] & tops
        if clash:
            raise ConvertError(f"{path}: mixed key layouts (top-level prefixes {sorted(tops)})")
        if "backbone" not in tops:   # else the architecture inference would report a ResNet of 0 blocks
            raise ConvertError(f"{path}: no backbone.* keys (a {layout} state dict of the neck and head only?)")
        return layout
    if {"backbone", "neck", "bbox_head", "mask_feat_head"} <= tops:
        return "official"
    raise ConvertError(f"{path}: not a SOLOv2 state dict: top-level prefixes {sorted(tops)}, expected "
                       "backbone/neck/mask_feat_head/bbox_head (official), backbone/neck/mask_head "
                       "(mmdetection) or backbone/fpn/mask_feat_head/bbox_head (pytorch_solov2)")


def _apply_rules(key: str, rules) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def to_official(state: Dict[str, np.ndarray], layout: str, path: str = "checkpoint") -> Tuple[dict, int]:
    """Rename a source state dict to official keys; drop ``num_batches_tracked``. Returns (state, n_dropped)."""
    out, dropped = {}, 0
    for key, arr in state.items():
        if key.endswith(".num_batches_tracked"):
            dropped += 1
            continue
        new = _apply_rules(key, RENAME_RULES[layout])
        if new in out:
            raise ConvertError(f"{path}: two keys map to {new!r}")
        out[new] = arr
    return out, dropped


def official_to_mindspore_name(key: str) -> str:
    """Official key -> MindSpore parameter name (BN/GN renames; all other names are unchanged)."""
    return _apply_rules(key, MINDSPORE_RULES)


def model_parameter_shapes(cfg: SOLOv2Config) -> Dict[str, Tuple[int, ...]]:
    """MindSpore parameter name -> shape of `solov2.models.solov2.build_model(cfg)`, in model order."""
    from solov2.models.solov2 import build_model  # imports MindSpore: only when a conversion gets this far
    net = build_model(cfg)
    return {name: tuple(p.shape) for name, p in net.parameters_and_names()}


def verify_names_and_shapes(ms_state: Dict[str, np.ndarray], expected: Dict[str, Tuple[int, ...]],
                            path: str = "checkpoint") -> None:
    """Strict check: every model parameter present, nothing unused, every shape equal."""
    missing = [k for k in expected if k not in ms_state]
    unused = [k for k in ms_state if k not in expected]
    wrong = [f"{k} {tuple(ms_state[k].shape)} vs model {expected[k]}" for k in expected
             if k in ms_state and tuple(ms_state[k].shape) != expected[k]]
    problems = [f"{len(v)} {what}: {listing(v)}" for what, v in
                (("missing", missing), ("unused", unused), ("shape mismatches", wrong)) if v]
    if problems:
        raise ConvertError(f"{path}: does not fit the model: " + "; ".join(problems))


def save_mindspore_checkpoint(ms_state: Dict[str, np.ndarray], dst: str, sidecar: dict, force: bool) -> None:
    """Write `dst` (.ckpt) and its sidecar `dst + '.json'`, each atomically; the sidecar is written first, so a
    checkpoint never appears without it, and both are written in full before either replaces an earlier one. If
    the checkpoint alone could not be renamed into place (Ctrl-C), the earlier sidecar is put back: never a
    sidecar beside another checkpoint. An existing pair is re-checked just before (another run
    may have written it meanwhile)."""
    import mindspore as ms

    from solov2.checkpoint import save_failure, save_to_temporary, sidecar_path
    try:
        with restored_on_failure(sidecar_path(dst)) as replacing, atomic_write(dst, mode=None) as tmp_ckpt:
            save_to_temporary(tmp_ckpt, [{"name": k, "data": ms.Tensor(v)} for k, v in ms_state.items()])
            with open(tmp_ckpt, "rb+") as f:   # on disk before the sidecar that describes it
                os.fsync(f.fileno())
            _check_outputs(dst, force)  # again: another run may have written them meanwhile
            replacing()
            write_json_atomic(sidecar_path(dst), sidecar, indent=1)
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        raise ConvertError(str(save_failure(dst, exc))) from None


def _check_outputs(dst: str, force: bool) -> None:
    """ConvertError unless `dst` and its sidecar may be written (absent or --force; folder exists, writable)."""
    from solov2.checkpoint import sidecar_path
    for path in (dst, sidecar_path(dst)):
        try:
            check_writable(path, force)
        except SolovError as e:
            raise ConvertError(str(e)) from None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_checkpoint(src: Union[str, os.PathLike], dst: Union[str, os.PathLike],
                       config: Union[None, str, os.PathLike, SOLOv2Config] = None, force: bool = False,
                       log=print) -> dict:
    """Convert `src` (.pth, any supported layout) into `dst` (.ckpt) + `dst.json`; returns the summary.

    config: a SOLOv2Config, a config file path (read with `solov2.config.load_config`), or None to infer
    the architecture from the checkpoint. Raises ConvertError (DST untouched) on any problem.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    config = os.fspath(config) if isinstance(config, os.PathLike) else config
    if not dst.endswith(".ckpt"):
        raise ConvertError(f"{dst}: the output name must end in .ckpt (MindSpore refuses other suffixes)")
    check_not_an_input([dst, dst + ".json"], {"checkpoint SRC": src, "--config": config if isinstance(config, str)
                                                 else None})
    _check_outputs(dst, force)
    state, info = load_torch_checkpoint(src)
    layout = detect_layout(list(state), src)
    official, n_nbt = to_official(state, layout, src)
    arch = infer_arch({k: tuple(v.shape) for k, v in official.items()}, src)
    if isinstance(config, str):
        try:
            from solov2.config import load_config
        except ImportError as exc:
            raise ConvertError("--config needs solov2.config.load_config, which is not available") from exc
        try:
            config = load_config(config)
        except Exception as exc:  # noqa: BLE001 - any config problem is reported as one line
            raise ConvertError(f"{config}: cannot read the config ({type(exc).__name__}: {exc})") from None
    if config is None:
        cfg, cfg_note = config_from_arch(arch), "inferred from the checkpoint"
    else:
        check_config(arch, config, src)
        cfg, cfg_note = config, f"checked against {config.source or 'the given config'}"
    ms_state: Dict[str, np.ndarray] = {}
    for key, value in official.items():
        name = official_to_mindspore_name(key)
        if name in ms_state:   # e.g. both `gn.weight` and `gn.gamma`: one of them would be dropped unseen
            raise ConvertError(f"{src}: two keys map to the MindSpore parameter {name!r}")
        ms_state[name] = value
    bad_dtype = [k for k, v in ms_state.items() if v.dtype != np.float32]
    if bad_dtype:
        raise ConvertError(f"{src}: non-float parameters: {listing(bad_dtype)}")
    from solov2.checkpoint import check_finite  # imports MindSpore, which the conversion needs next anyway
    check_finite(src, ms_state)
    try:
        expected = model_parameter_shapes(cfg)
    except ValueError as exc:   # a combination the model refuses (e.g. deformable BasicBlocks everywhere)
        raise ConvertError(f"{src}: its architecture ({describe_arch(arch)}) cannot be built: {exc}") from None
    verify_names_and_shapes(ms_state, expected, src)
    ms_state = {k: ms_state[k] for k in expected}  # model order: identical files for every source layout
    classes = info["classes"]
    notes = []
    if classes is not None and len(classes) != arch["num_classes"] - 1:
        notes.append(f"checkpoint meta lists {len(classes)} class names for {arch['num_classes'] - 1} "
                     "outputs; names not stored")
        classes = None
    notes += [f"cast {n} {dt} tensors to float32" for dt, n in sorted(info["cast"].items())]
    summary = {
        "format": "solov2.convert/1", "source": os.path.abspath(src), "source_sha256": _sha256(src), "layout": layout,
        "container": info["container"], "config": cfg_note, "arch": arch, "classes": classes,
        "num_tensors": len(ms_state), "num_parameters": int(sum(v.size for v in ms_state.values())),
        "skipped_num_batches_tracked": n_nbt, "ignored_entries": info["ignored"], "notes": notes,
        "output": os.path.abspath(dst), "sidecar": os.path.abspath(dst) + ".json",
    }
    save_mindspore_checkpoint(ms_state, dst, {k: v for k, v in summary.items() if k != "sidecar"}, force)
    if log is not None:
        log(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    """Human-readable multi-line summary of a conversion."""
    a = s["arch"]
    classes = (f"{a['num_classes'] - 1} ({', '.join(s['classes'][:5])}{', ...' if len(s['classes']) > 5 else ''})"
               if s["classes"] else f"{a['num_classes'] - 1} (no class names in the checkpoint)")
    lines = [
        f"source:      {s['source']} (layout: {s['layout']}, weights from '{s['container']}')",
        f"arch:        {describe_arch(a)}",
        f"config:      {s['config']}",
        f"classes:     {classes}",
        f"converted:   {s['num_tensors']} tensors, {s['num_parameters']:,} parameters (float32)",
        f"skipped:     {s['skipped_num_batches_tracked']} num_batches_tracked; ignored top-level entries: "
        f"{', '.join(s['ignored_entries']) or 'none'}",
    ]
    lines += [f"note:        {n}" for n in s["notes"]]
    lines += [f"wrote:       {s['output']}", f"             {s['sidecar']} (class names, arch, source)"]
    return "\n".join(lines)
