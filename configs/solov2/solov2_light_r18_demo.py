# solov2_light_r18_demo.py -- the demo config (`python -m solov2.tools.demo`): SOLOv2 light-R18 trained FROM SCRATCH on the
# project's synthetic shapes (solov2.tools.synthetic: 160x128 images, 3 classes, 1-3 objects of ~30-90 px) on a 2-core CPU.
# Official mmdet-1.x format (read by solov2.config.load_config without being executed). Differences from
# solov2_light_448_r18_fpn_8gpu_3x.py and why:
# * no pretrained backbone (nothing may be downloaded): every stage trains (frozen_stages=-1) and BN uses batch
#   statistics (norm_eval=False), otherwise random frozen BN statistics would cripple a from-scratch ResNet;
# * one small train/test scale (160, 128) = the image size: one graph shape each, no resampling;
# * FPN / head / mask-feature widths halved (128 / 128 / E=64 instead of 256 / 256 / 128): ~25% faster on CPU;
# * scale_ranges / num_grids scaled to the small images: objects of 30-90 px land on levels 0-3;
# * a short, high-lr schedule: 6 epochs x 50 iterations of 4 images, lr 0.02 (8x the official per-image
#   lr) reached over a 100-iteration warmup, gradients clipped at norm 10, lr / 10 for the last epoch
#   (measured: with a 50-iteration warmup and clip 35 the category loss spiked at the end of the warmup and
#   mask AP50 varied 0.32-0.58 between seeds). The demo overrides the data paths, and total_epochs with --epochs.
model = dict(
    type='SOLOv2',
    pretrained=None,
    backbone=dict(
        type='ResNet',
        depth=18,
        num_stages=4,
        out_indices=(0, 1, 2, 3),  # C2, C3, C4, C5
        frozen_stages=-1,
        norm_eval=False,
        style='pytorch'),
    neck=dict(
        type='FPN',
        in_channels=[64, 128, 256, 512],
        out_channels=128,
        start_level=0,
        num_outs=5),
    bbox_head=dict(
        type='SOLOv2Head',
        num_classes=4,  # 3 shapes + background
        in_channels=128,
        stacked_convs=2,
        seg_feat_channels=128,
        strides=[8, 8, 16, 32, 32],
        scale_ranges=((1, 32), (16, 64), (32, 128), (64, 256), (128, 512)),
        sigma=0.2,
        num_grids=[24, 20, 16, 12, 8],  # cells of 5-20 px on a 160x128 canvas
        ins_out_channels=64,
        loss_ins=dict(
            type='DiceLoss',
            use_sigmoid=True,
            loss_weight=3.0),
        loss_cate=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0)),
    mask_feat_head=dict(
        type='MaskFeatHead',
        in_channels=128,
        out_channels=64,
        start_level=0,
        end_level=3,
        num_classes=64,  # = bbox_head.ins_out_channels (dynamic kernel size)
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
)
# training and testing settings
train_cfg = dict()
test_cfg = dict(
    nms_pre=500,
    score_thr=0.1,
    mask_thr=0.5,
    update_thr=0.05,
    kernel='gaussian',  # 'gaussian' or 'linear' Matrix NMS
    sigma=2.0,
    max_per_img=100)
# dataset settings
dataset_type = 'CocoDataset'
data_root = 'demo_out/data/'
classes = ('circle', 'rectangle', 'triangle')
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', img_scale=(160, 128), keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(160, 128),
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='Pad', size_divisor=32),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(
    imgs_per_gpu=4,
    workers_per_gpu=2,
    train=dict(
        type=dataset_type,
        ann_file=data_root + 'annotations/instances_train.json',
        img_prefix=data_root + 'train/',
        pipeline=train_pipeline),
    val=dict(
        type=dataset_type,
        ann_file=data_root + 'annotations/instances_val.json',
        img_prefix=data_root + 'val/',
        pipeline=test_pipeline),
    test=dict(
        type=dataset_type,
        ann_file=data_root + 'annotations/instances_val.json',
        img_prefix=data_root + 'val/',
        pipeline=test_pipeline))
# optimizer: from scratch, batch 4 on one CPU
optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001)
optimizer_config = dict(grad_clip=dict(max_norm=10, norm_type=2))
# learning policy
lr_config = dict(
    policy='step',
    warmup='linear',
    warmup_iters=100,
    warmup_ratio=0.1,
    step=[5])
checkpoint_config = dict(interval=1)
log_config = dict(
    interval=10,
    hooks=[
        dict(type='TextLoggerHook'),
    ])
# runtime settings
total_epochs = 6
device_ids = range(1)
dist_params = dict(backend='nccl')
log_level = 'INFO'
work_dir = './demo_out/work'
load_from = None
resume_from = None
workflow = [('train', 1)]
