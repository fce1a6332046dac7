"""SOLOv2 configuration: official SOLO (mmdetection-1.x style) config files -> frozen, validated settings.

  reader.py   the file's names evaluated safely (no exec) and `a.b.c=value` overrides
  keys.py     every key the official files use or this port reads (unknown keys are errors)
  settings.py the frozen dataclasses the package consumes
  section.py  checked access to one section (typed values, errors naming the file and key)
  schema.py   `load_config`, which reads and validates a file into them (model, data, test)
  training.py its training sections (optimizer, mixed precision, evaluation)
"""
from solov2.config.reader import ConfigError, apply_overrides, load_config_dict
from solov2.config.schema import (AmpConfig, BackboneConfig, DataConfig, EvalConfig, HeadConfig, MaskFeatConfig,
                                  NeckConfig, OptimConfig, SOLOv2Config, TestConfig, load_config)

__all__ = ["AmpConfig", "ConfigError", "apply_overrides", "load_config_dict", "BackboneConfig", "DataConfig",
           "EvalConfig", "HeadConfig", "MaskFeatConfig", "NeckConfig", "OptimConfig", "SOLOv2Config", "TestConfig",
           "load_config"]
