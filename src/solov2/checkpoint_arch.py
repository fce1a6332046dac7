"""The architecture a checkpoint implies: inferred from its official keys and shapes (depth, ResNeXt groups, widths,
E, classes, which convolutions are deformable and of which type), turned into a config, or checked against one."""
import re
from typing import Dict, Optional, Tuple

from solov2.config import BackboneConfig, HeadConfig, MaskFeatConfig, NeckConfig, SOLOv2Config
from solov2.errors import listing
from solov2.torch_checkpoint import ConvertError

# (bottleneck?, blocks per stage) -> ResNet depth, as in mmdet ResNet.arch_settings.
RESNET_DEPTHS = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34,
                 (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101}


def infer_arch(shapes: Dict[str, Tuple[int, ...]], path: str = "checkpoint") -> dict:
    """Architecture from official keys/shapes: depth, channels, stacked convs, E, classes.

    shapes: official key -> shape. num_classes follows the official convention (cate channels + 1).
    """
    try:
        return _infer_arch(shapes, path)
    except (IndexError, ZeroDivisionError) as exc:   # a conv weight that is not 4-D, or has a zero size
        raise ConvertError(f"{path}: a convolution weight has a shape no SOLOv2 layer has ({type(exc).__name__}: "
                           f"{exc}); the file's shapes do not describe a SOLOv2 model") from None


def _infer_arch(shapes: Dict[str, Tuple[int, ...]], path: str) -> dict:
    def shape(key):
        if key not in shapes:
            raise ConvertError(f"{path}: missing key {key!r} (needed to infer the architecture)")
        return shapes[key]

    def count(prefix):
        return len({int(m.group(1)) for k in shapes for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m})

    bottleneck = "backbone.layer1.0.conv3.weight" in shapes
    blocks = tuple(count(f"backbone.layer{i}.") for i in range(1, 5))
    depth = RESNET_DEPTHS.get((bottleneck, blocks))
    if depth is None:
        raise ConvertError(f"{path}: unsupported backbone: {'Bottleneck' if bottleneck else 'BasicBlock'} "
                           f"ResNet with {blocks} blocks per stage (supported depths 18/34/50/101)")
    stacked = count("bbox_head.cate_convs.")
    arch = {
        "depth": depth,
        "fpn_in_channels": [shape(f"neck.lateral_convs.{i}.conv.weight")[1] for i in range(4)],
        "fpn_out_channels": shape("neck.lateral_convs.0.conv.weight")[0],
        "head_in_channels": shape("bbox_head.cate_convs.0.conv.weight")[1],
        "stacked_convs": stacked,
        "seg_feat_channels": shape("bbox_head.solo_cate.weight")[1],
        "ins_out_channels": shape("bbox_head.solo_kernel.weight")[0],
        "mask_feat_in_channels": shape("mask_feat_head.convs_all_levels.0.conv0.conv.weight")[1],
        "mask_feat_channels": shape("mask_feat_head.convs_all_levels.0.conv0.conv.weight")[0],
        "mask_feat_out_channels": shape("mask_feat_head.conv_pred.0.conv.weight")[0],
        "num_classes": shape("bbox_head.solo_cate.weight")[0] + 1,
        **_resnext_arch(shapes, bottleneck, path), **_dcn_arch(shapes, stacked, path),
    }
    if arch["mask_feat_out_channels"] != arch["ins_out_channels"]:
        raise ConvertError(f"{path}: inconsistent checkpoint: solo_kernel predicts {arch['ins_out_channels']}-d "
                           f"kernels but the mask features have {arch['mask_feat_out_channels']} channels")
    return arch


def _dcn_kind(shapes: Dict[str, Tuple[int, ...]], conv: str, taps: int) -> Optional[str]:
    """'DCN' | 'DCNv2' | None for the conv `conv` (its weight is `conv`.weight), from its conv_offset channels
    (2 or 3 per kernel tap); another count is returned as a description (an error for `_one_kind`)."""
    off = shapes.get(conv + ".conv_offset.weight")
    return None if off is None else {2 * taps: "DCN", 3 * taps: "DCNv2"}.get(off[0], f"{off[0]} offset channels")


def _one_kind(kinds: Dict[str, Optional[str]], what: str, path: str) -> Optional[str]:
    """The one deformable type among a group of convs (name -> kind or None); ConvertError if types are mixed."""
    found = {v for v in kinds.values() if v is not None}
    odd = [f"{k}: {v}" for k, v in kinds.items() if v not in (None, "DCN", "DCNv2")]
    if odd or len(found) > 1:
        raise ConvertError(f"{path}: unsupported deformable convolutions in {what}: "
                           + (listing(odd) if odd else f"types {sorted(found)} mixed"))
    return next(iter(found), None)


def _resnext_arch(shapes: Dict[str, Tuple[int, ...]], bottleneck: bool, path: str) -> dict:
    """groups / base_width of a Bottleneck backbone from layer1's conv2 (width = base_width * groups at planes 64)."""
    if not bottleneck:
        return {"groups": 1, "base_width": 4}
    key = "backbone.layer1.0.conv2.weight"
    if key not in shapes:
        raise ConvertError(f"{path}: missing key {key!r} (needed to infer the architecture)")
    width, per_group = shapes[key][:2]
    groups = width // per_group
    if groups == 1 and width != 64:
        raise ConvertError(f"{path}: unsupported backbone: layer1 conv2 width {width} without groups")
    return {"groups": groups, "base_width": 4 if groups == 1 else width // groups}


def _dcn_arch(shapes: Dict[str, Tuple[int, ...]], stacked: int, path: str) -> dict:
    """Which convs of the checkpoint are deformable (they have conv_offset keys), and of which type."""
    stages, backbone = [], {}
    for i in range(1, 5):
        blocks = sorted({k.split(".conv2.")[0] for k in shapes if k.startswith(f"backbone.layer{i}.") and ".conv2." in k})
        stage = {b: _dcn_kind(shapes, b + ".conv2", 9) for b in blocks}
        kind = _one_kind(stage, f"backbone.layer{i}", path)
        if kind is not None and None in stage.values():
            raise ConvertError(f"{path}: backbone.layer{i}: only some blocks have a deformable conv2")
        stages.append(kind is not None)
        backbone.update(stage)
    tower = {f"{b}.{i}": _dcn_kind(shapes, f"bbox_head.{b}.{i}.conv", 9)
             for b in ("cate_convs", "kernel_convs") for i in range(stacked)}
    head_dcn = _one_kind(tower, "bbox_head", path)
    placed = [i for i in range(stacked) if tower[f"cate_convs.{i}"] is not None]
    if [i for i in range(stacked) if tower[f"kernel_convs.{i}"] is not None] != placed or \
            placed not in ([], [stacked - 1], list(range(stacked))):
        raise ConvertError(f"{path}: unsupported placement of deformable convs in bbox_head: "
                           f"{listing(sorted(k for k, v in tower.items() if v))} (supported: every tower conv of "
                           "both branches, or the last one of each)")
    mask = {k[:-len(".weight")]: _dcn_kind(shapes, k[:-len(".weight")], shapes[k][2] * shapes[k][3])
            for k in shapes if k.startswith("mask_feat_head.") and k.endswith(".conv.weight")}
    mask_dcn = _one_kind(mask, "mask_feat_head", path)
    if mask_dcn is not None and None in mask.values():
        raise ConvertError(f"{path}: mask_feat_head: only some convs are deformable")
    return {"backbone_dcn": _one_kind(backbone, "the backbone", path), "stage_with_dcn": stages,
            "head_dcn": head_dcn, "head_dcn_all_convs": placed != [stacked - 1] or stacked == 1,
            "mask_feat_dcn": mask_dcn}


def config_from_arch(arch: dict) -> SOLOv2Config:
    """A SOLOv2Config whose weight shapes follow `arch`; non-weight settings keep their defaults."""
    return SOLOv2Config(
        backbone=BackboneConfig(depth=arch["depth"], groups=arch["groups"], base_width=arch["base_width"],
                                dcn=arch["backbone_dcn"], stage_with_dcn=tuple(arch["stage_with_dcn"])),
        neck=NeckConfig(in_channels=tuple(arch["fpn_in_channels"]), out_channels=arch["fpn_out_channels"]),
        head=HeadConfig(num_classes=arch["num_classes"], in_channels=arch["head_in_channels"],
                        stacked_convs=arch["stacked_convs"], seg_feat_channels=arch["seg_feat_channels"],
                        ins_out_channels=arch["ins_out_channels"], dcn=arch["head_dcn"],
                        dcn_all_convs=arch["head_dcn_all_convs"],
                        type="SOLOv2Head" if arch["head_dcn_all_convs"] else "SOLOv2LightHead"),
        mask_feat=MaskFeatConfig(in_channels=arch["mask_feat_in_channels"], out_channels=arch["mask_feat_channels"],
                                 num_classes=arch["mask_feat_out_channels"], dcn=arch["mask_feat_dcn"]),
        source="inferred from checkpoint keys")


def check_config(arch: dict, cfg: SOLOv2Config, path: str = "checkpoint") -> None:
    """Raise ConvertError naming every architecture field where checkpoint and config disagree."""
    b, n, h, m = cfg.backbone, cfg.neck, cfg.head, cfg.mask_feat
    checks = [
        (arch["depth"], b.depth, "ResNet-{a} checkpoint, config is ResNet-{c}"),
        (arch["num_classes"] - 1, h.num_classes - 1, "checkpoint has {a} classes, config expects {c}"),
        (arch["stacked_convs"], h.stacked_convs, "checkpoint has {a} stacked head convs, config expects {c}"),
        (arch["seg_feat_channels"], h.seg_feat_channels, "checkpoint head width is {a}, config expects {c}"),
        (arch["ins_out_channels"], h.ins_out_channels, "checkpoint kernel size E is {a}, config expects {c}"),
        (arch["head_in_channels"], h.in_channels, "checkpoint head input is {a} channels, config expects {c}"),
        (tuple(arch["fpn_in_channels"]), tuple(n.in_channels), "checkpoint FPN inputs are {a}, config expects {c}"),
        (arch["fpn_out_channels"], n.out_channels, "checkpoint FPN width is {a}, config expects {c}"),
        (arch["mask_feat_in_channels"], m.in_channels, "checkpoint mask-feature input is {a}, config expects {c}"),
        (arch["mask_feat_channels"], m.out_channels, "checkpoint mask-feature width is {a}, config expects {c}"),
        (arch["mask_feat_out_channels"], m.num_classes, "checkpoint mask features are {a}-d, config expects {c}"),
        ((arch["groups"], arch["base_width"]), (b.groups, b.base_width if b.groups > 1 else 4),
         "checkpoint backbone has (groups, base_width) {a}, config expects {c}"),
        ((arch["backbone_dcn"], tuple(arch["stage_with_dcn"])), (b.dcn, tuple(b.stage_with_dcn)),
         "checkpoint backbone deformable conv2 (type, stages) is {a}, config expects {c}"),
        ((arch["head_dcn"], arch["head_dcn"] and ("all" if arch["head_dcn_all_convs"] else "last")),
         (h.dcn, h.dcn and ("all" if h.dcn_all_convs else "last")),
         "checkpoint bbox_head deformable tower convs (type, which) are {a}, config expects {c}"),
        (arch["mask_feat_dcn"], m.dcn, "checkpoint mask_feat_head deformable convs are {a}, config expects {c}"),
    ]
    bad = [msg.format(a=a, c=c) for a, c, msg in checks if a != c]
    if bad:
        where = f" ({cfg.source})" if cfg.source else ""
        raise ConvertError(f"{path}: checkpoint does not match the config{where}: " + "; ".join(bad))


def describe_arch(a: dict) -> str:
    """One line: backbone (ResNet/ResNeXt, deformable stages), FPN, head and mask-feature widths and DCN types."""
    net = f"ResNeXt-{a['depth']} {a['groups']}x{a['base_width']}d" if a["groups"] > 1 else f"ResNet-{a['depth']}"
    if a["backbone_dcn"]:
        net += f" ({a['backbone_dcn']} in " + ", ".join(f"res{i + 2}" for i, on in enumerate(a["stage_with_dcn"])
                                                          if on) + ")"
    head = f"{a['stacked_convs']} stacked convs x {a['seg_feat_channels']}"
    if a["head_dcn"]:
        head += f" ({a['head_dcn']} in {'every' if a['head_dcn_all_convs'] else 'the last'} tower conv)"
    mask = f"mask features {a['mask_feat_channels']}" + (f" ({a['mask_feat_dcn']})" if a["mask_feat_dcn"] else "")
    return f"{net}, FPN {a['fpn_out_channels']}, {head}, E={a['ins_out_channels']}, {mask}"
