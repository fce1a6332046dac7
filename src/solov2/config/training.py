"""The training sections of a config file: optimizer, lr_config and total_epochs, mixed precision (amp_level,
fp16), and evaluation (validation while training)."""
import math

from solov2.config.reader import _is_int, _is_num
from solov2.config.section import FLOAT32_MAX, Section
from solov2.config.settings import VAL_METRIC_SUFFIXES, AmpConfig, EvalConfig, OptimConfig

def optim_config(top: Section) -> OptimConfig:
    o, lc = top.sub("optimizer"), top.sub("lr_config")
    o.one_of("type", ("SGD",)), o.forbid("paramwise_options", "nesterov")
    oc = top.sub("optimizer_config", {})
    clip = oc.sub("grad_clip") if oc.d.get("grad_clip") is not None else None
    if clip:
        clip.one_of("norm_type", (2,), 2)
    lc.one_of("policy", ("step",)), lc.one_of("by_epoch", (True,), True)
    warmup, total = lc.one_of("warmup", (None, "linear"), None), top.get("total_epochs", "int>=1")
    if warmup and lc.get("warmup_iters", "int") <= 0:
        raise lc.fail("warmup_iters", "must be > 0 when warmup is set")
    step = lc.get("step")                                   # an int k means "every k epochs"
    lr_steps = tuple(range(step, total, step)) if _is_int(step) and step > 0 else lc.get("step", "ints")
    if any(s < 1 for s in lr_steps) or list(lr_steps) != sorted(set(lr_steps)):
        # mmcv takes the first listed epoch the current one has not reached: unsorted lists mean something else there
        raise lc.fail("step", f"must be epochs >= 1 in increasing order, got {step!r}")
    return OptimConfig(lr=o.get("lr", "num>0"), momentum=o.get("momentum", "0..1", 0.0),
                       weight_decay=o.get("weight_decay", "num>=0", 0.0),
                       grad_clip=clip and clip.get("max_norm", "num>0"), warmup=warmup,
                       warmup_iters=lc.get("warmup_iters", "int>=0", 0), warmup_ratio=lc.get("warmup_ratio", "0..1", 0.1),
                       lr_steps=lr_steps,
                       lr_gamma=lc.get("gamma", "num>0", 0.1), total_epochs=total)



AMP_LEVELS = ("O0", "O1", "O2", "O3")


def _loss_scale(f: Section) -> tuple:
    """fp16.loss_scale as mmcv's Fp16OptimizerHook reads it -> (mode, init_scale, scale_factor, scale_window).

    Absent: static 512 (mmcv's default); a number: static; 'dynamic': mmcv's dynamic defaults (2**32, x2 after
    1000 finite steps); dict(init_scale, mode, scale_factor, scale_window): as given (mode default 'dynamic').
    """
    ls = f.get("loss_scale", "any", 512.0)
    if ls == "dynamic":
        return "dynamic", 2.0 ** 32, 2, 1000
    if isinstance(ls, dict):
        d = f.sub("loss_scale")
        mode = d.one_of("mode", ("dynamic", "static"), "dynamic")
        init, factor = d.get("init_scale", "num>0", 2.0 ** 32), d.get("scale_factor", "num>0", 2)
        if not (1 <= init < math.inf):
            raise d.fail("init_scale", f"must be a finite number >= 1, got {init!r}")
        if factor < 2 or not float(factor).is_integer():
            raise d.fail("scale_factor", f"must be an integer >= 2 (MindSpore's DynamicLossScaler), got {factor!r}")
        return mode, float(init), int(factor), d.get("scale_window", "int>=1", 1000)
    if _is_num(ls) and not isinstance(ls, bool):
        if not (1 <= ls <= FLOAT32_MAX):   # it becomes a float32
            raise f.fail("loss_scale", f"must be a finite number >= 1, got {ls!r}"
                                       + (" (beyond float32)" if 1 <= ls < math.inf else ""))
        return "static", float(ls), 2, 1000
    raise f.fail("loss_scale", f"must be a number, 'dynamic' or dict(init_scale=..., mode=...), got {ls!r}")


def amp_config(top: Section) -> AmpConfig:
    """amp_level (default 'O2' when the file has mmdetection's fp16 section, else 'O0') and its loss scaling.

    With an fp16 section: `_loss_scale` (checked at O0 too, where it is then not used). Without one, mixed
    precision scales dynamically from 2**16, x2 after 2000 finite steps (MindSpore's and mindyolo's defaults).
    """
    has_fp16 = top.d.get("fp16") is not None
    scale = _loss_scale(top.sub("fp16")) if has_fp16 else ("dynamic", 2.0 ** 16, 2, 2000)
    level = top.one_of("amp_level", AMP_LEVELS, "O2" if has_fp16 else "O0")
    if level == "O0":
        return AmpConfig()
    mode, init, factor, window = scale
    return AmpConfig(level=level, loss_scale=mode, init_scale=init, scale_factor=factor, scale_window=window)


EVAL_METRICS = ("segm", "bbox")


def evaluation_config(top: Section) -> EvalConfig:
    """evaluation = dict(interval=N, metric=['segm', 'bbox'], save_best='segm_mAP') (mmdetection's keys).

    metric: 'segm', 'bbox' or a list of them (default both); save_best: None (default, as mmdetection), 'auto'
    (the first metric's mAP) or one of the evaluated log keys (`EvalConfig.keys`). No section: no validation.
    """
    if top.d.get("evaluation") is None:
        return EvalConfig()
    e = top.sub("evaluation")
    metric = e.get("metric", "any", list(EVAL_METRICS))
    metrics = (metric,) if isinstance(metric, str) else metric
    if not (isinstance(metrics, (list, tuple)) and metrics and all(m in EVAL_METRICS for m in metrics)
            and len(set(metrics)) == len(metrics)):
        raise e.fail("metric", f"must be 'segm', 'bbox' or a list of them without repeats, got {metric!r}")
    cfg = EvalConfig(interval=e.get("interval", "int>=1", 1), metrics=tuple(metrics))
    best = e.get("save_best", "str?", None)
    if best == "auto":
        best = f"{metrics[0]}_{VAL_METRIC_SUFFIXES[0]}"
    if best is not None and best not in cfg.keys():
        raise e.fail("save_best", f"{best!r} is not a key this evaluation logs (one of 'auto', "
                                  f"{', '.join(map(repr, cfg.keys()))})")
    return EvalConfig(interval=cfg.interval, metrics=cfg.metrics, save_best=best)
