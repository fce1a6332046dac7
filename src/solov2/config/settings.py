"""The settings the package consumes: frozen, typed dataclasses, built by `solov2.config.schema.load_config` from
an official config file (or by `dataclasses.replace`), never changed in place. Defaults are those of the official
R101 config; `load_config` fills every field from the file.
"""
from dataclasses import dataclass, field
from typing import Optional, Tuple


@dataclass(frozen=True)
class BackboneConfig:
    """model.backbone: a torchvision-style ResNet or ResNeXt (style='pytorch'), optionally with deformable conv2."""
    depth: int = 101                      # 18, 34, 50 or 101
    frozen_stages: int = 1                # stem + layer1 frozen
    norm_eval: bool = True                # BN running stats frozen in training
    out_indices: Tuple[int, ...] = (0, 1, 2, 3)
    groups: int = 1                       # ResNeXt cardinality (type='ResNeXt'); 1 = ResNet
    base_width: int = 4                   # ResNeXt width per group at planes=64
    dcn: Optional[str] = None             # dcn=dict(type=...): 'DCN' (v1) or 'DCNv2' (modulated), or None
    stage_with_dcn: Tuple[bool, ...] = (False, False, False, False)   # which of res2..res5 get the deformable conv2


@dataclass(frozen=True)
class NeckConfig:
    """model.neck: FPN, P2..P6 (num_outs=5; P6 = max-pool of P5)."""
    in_channels: Tuple[int, ...] = (256, 512, 1024, 2048)
    out_channels: int = 256
    num_outs: int = 5


@dataclass(frozen=True)
class HeadConfig:
    """model.bbox_head (SOLOv2Head or SOLOv2LightHead) and its losses (loss_ins: Dice, loss_cate: sigmoid focal)."""
    type: str = "SOLOv2Head"
    num_classes: int = 81                 # official convention: foreground classes + 1 (background)
    in_channels: int = 256
    stacked_convs: int = 4
    seg_feat_channels: int = 512
    ins_out_channels: int = 256           # E: dynamic-kernel size = mask-feature channels
    strides: Tuple[int, ...] = (8, 8, 16, 32, 32)
    scale_ranges: Tuple[Tuple[int, int], ...] = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    sigma: float = 0.2
    num_grids: Tuple[int, ...] = (40, 36, 24, 16, 12)
    ins_loss_weight: float = 3.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    cate_loss_weight: float = 1.0
    dcn: Optional[str] = None             # use_dcn_in_tower + type_dcn: 'DCN' or 'DCNv2' tower convs, or None
    dcn_all_convs: bool = True            # every tower conv (SOLOv2Head) or only the last one (SOLOv2LightHead)

    @property
    def cate_out_channels(self) -> int:
        return self.num_classes - 1


@dataclass(frozen=True)
class MaskFeatConfig:
    """model.mask_feat_head: fuses FPN levels start_level..end_level (P2..P5) at 1/4 scale into E mask-feature
    channels; E is called num_classes in the official config."""
    in_channels: int = 256
    out_channels: int = 128
    start_level: int = 0
    end_level: int = 3
    num_classes: int = 256                # official name; = output channels E (ins_out_channels)
    dcn: Optional[str] = None             # conv_cfg=dict(type='DCNv2'): every conv, the 1x1 conv_pred included


@dataclass(frozen=True)
class TestConfig:
    """test_cfg: candidate selection and Matrix NMS."""
    nms_pre: int = 500
    score_thr: float = 0.1
    mask_thr: float = 0.5
    update_thr: float = 0.05
    kernel: str = "gaussian"              # 'gaussian' or 'linear'
    sigma: float = 2.0
    max_per_img: int = 100


@dataclass(frozen=True)
class DataConfig:
    """data.* and the pipelines' settings (img_norm_cfg, Resize scales, RandomFlip, Pad)."""
    mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)   # RGB
    std: Tuple[float, float, float] = (58.395, 57.12, 57.375)
    to_rgb: bool = True
    test_scale: Tuple[int, int] = (1333, 800)                      # (long, short)
    train_scales: Tuple[Tuple[int, int], ...] = ((1333, 800),)
    flip_ratio: float = 0.5
    size_divisor: int = 32
    imgs_per_gpu: int = 2
    workers_per_gpu: int = 2
    train_ann_file: str = ""
    train_img_prefix: str = ""
    val_ann_file: str = ""
    val_img_prefix: str = ""
    test_ann_file: str = ""
    test_img_prefix: str = ""
    train_max_images: Optional[int] = None                         # data.train.max_images: first N images only
    val_max_images: Optional[int] = None                           # data.val.max_images: validate on the first N
    skip_bad: bool = False                                         # data.skip_bad: skip broken images with a warning
    canvas_buckets: bool = True                                    # data.canvas_buckets: fixed per-scale batch canvases


@dataclass(frozen=True)
class OptimConfig:
    """optimizer, optimizer_config.grad_clip, lr_config and total_epochs."""
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: Optional[float] = 35.0
    warmup: Optional[str] = "linear"
    warmup_iters: int = 500
    warmup_ratio: float = 0.01
    lr_steps: Tuple[int, ...] = (27, 33)
    lr_gamma: float = 0.1
    total_epochs: int = 36


@dataclass(frozen=True)
class AmpConfig:
    """amp_level and fp16 = dict(loss_scale=...) (mmdetection 1.x / mmcv): mixed precision and loss scaling.

    level: 'O0' float32 | 'O1' operator lists | 'O2' all but the norm layers in float16 | 'O3' all float16
    (see `solov2.engine.amp`). loss_scale: None (no scaling, O0) | 'static' | 'dynamic'; a dynamic scale is
    multiplied by scale_factor after scale_window finite steps in a row and divided by it on an overflow.
    """
    level: str = "O0"
    loss_scale: Optional[str] = None
    init_scale: float = 2.0 ** 16
    scale_factor: int = 2
    scale_window: int = 2000


VAL_METRIC_SUFFIXES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")   # mmdetection's log keys


@dataclass(frozen=True)
class EvalConfig:
    """evaluation = dict(interval, metric, save_best) (mmdetection): COCO AP on data.val while training.

    interval 0 (no `evaluation` section) validates never; otherwise after every `interval` epochs and after the
    last. save_best: the log key whose highest value keeps `best_<key>_epoch_N.ckpt` (e.g. 'segm_mAP'), or None.
    """
    interval: int = 0
    metrics: Tuple[str, ...] = ("segm", "bbox")
    save_best: Optional[str] = None

    def keys(self) -> Tuple[str, ...]:
        """The log.json keys of one evaluation: 'segm_mAP', 'segm_mAP_50', ..., 'bbox_mAP_l'."""
        return tuple(f"{m}_{s}" for m in self.metrics for s in VAL_METRIC_SUFFIXES)


@dataclass(frozen=True)
class SOLOv2Config:
    """Everything the package reads from one config file; built by `load_config`, never changed afterwards."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    mask_feat: MaskFeatConfig = field(default_factory=MaskFeatConfig)
    test: TestConfig = field(default_factory=TestConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    amp: AmpConfig = field(default_factory=AmpConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    class_names: Optional[Tuple[str, ...]] = None  # the config's `classes=`/`CLASSES=`, else the dataset's
    load_from: Optional[str] = None
    work_dir: Optional[str] = None
    resume_from: Optional[str] = None
    pretrained: Optional[str] = None          # model.pretrained, e.g. 'torchvision://resnet101'
    checkpoint_interval: int = 1              # checkpoint_config.interval (epochs)
    log_interval: int = 50                    # log_config.interval (iterations)
    source: str = ""                          # the file this was read from
