"""The vocabulary of a config file: the keys each section may hold, so that a typo is an error, never ignored.

A section lists the keys the official SOLO (mmdetection 1.x) files use and those this port reads, including
the ones it reads only to refuse them with a clear message (DCN, other heads, ...). The top level, pipeline steps
and norm/DCN sub-dicts are free: mmdetection-1.x files define their own helper variables there.
"""
from typing import Dict, FrozenSet


def _keys(text: str) -> FrozenSet[str]:
    return frozenset(text.split())


_DATASET = _keys("type ann_file img_prefix pipeline max_images classes")
SECTIONS: Dict[str, FrozenSet[str]] = {
    "model": _keys("type pretrained backbone neck bbox_head mask_feat_head train_cfg test_cfg"),
    "model.backbone": _keys("type depth groups base_width num_stages out_indices frozen_stages style norm_eval "
                            "norm_cfg dcn stage_with_dcn"),
    "model.neck": _keys("type in_channels out_channels start_level end_level num_outs add_extra_convs conv_cfg "
                        "norm_cfg activation"),
    "model.bbox_head": _keys("type num_classes in_channels stacked_convs seg_feat_channels strides scale_ranges sigma "
                             "num_grids ins_out_channels loss_ins loss_cate conv_cfg norm_cfg use_dcn_in_tower "
                             "type_dcn"),
    "model.bbox_head.loss_ins": _keys("type use_sigmoid loss_weight"),
    "model.bbox_head.loss_cate": _keys("type use_sigmoid gamma alpha loss_weight"),
    "model.mask_feat_head": _keys("type in_channels out_channels start_level end_level num_classes norm_cfg "
                                  "conv_cfg"),
    "test_cfg": _keys("nms_pre score_thr mask_thr update_thr kernel sigma max_per_img"),
    "optimizer": _keys("type lr momentum weight_decay paramwise_options nesterov"),
    "optimizer_config": _keys("grad_clip"),
    "optimizer_config.grad_clip": _keys("max_norm norm_type"),
    "lr_config": _keys("policy step gamma warmup warmup_iters warmup_ratio by_epoch"),
    "checkpoint_config": _keys("interval"),
    "log_config": _keys("interval hooks"),
    "data": _keys("imgs_per_gpu workers_per_gpu train val test skip_bad canvas_buckets"),
    "data.train": _DATASET, "data.val": _DATASET, "data.test": _DATASET,
    "evaluation": _keys("interval metric save_best"),
    "fp16": _keys("loss_scale"),
    "fp16.loss_scale": _keys("init_scale mode scale_factor scale_window"),
}
# Keys of the free parts that the readers look up (pipeline steps, img_norm_cfg, top level).
_FREE = _keys("img_scale multiscale_mode keep_ratio ratio_range flip flip_ratio direction transforms mean std to_rgb "
              "size_divisor num_groups img_norm_cfg total_epochs load_from resume_from work_dir classes CLASSES "
              "dcn type deformable_groups fallback_on_stride amp_level requires_grad eps")
# What an override may add where the file lacks it (see config_reader.apply_overrides).
SCHEMA_KEYS: FrozenSet[str] = frozenset().union(*SECTIONS.values(), _FREE, (s.split(".")[-1] for s in SECTIONS))
# What may stand at the top level once the overrides are applied, where the file lacks it: the sections and the
# top-level settings the readers look up. A section's key given without its section (`lr=0.01` for
# `optimizer.lr=0.01`) would otherwise be a new top-level entry nobody reads.
TOP_KEYS: FrozenSet[str] = frozenset(s for s in SECTIONS if "." not in s) | _keys(
    "total_epochs load_from resume_from work_dir classes CLASSES amp_level img_norm_cfg")
