"""MindSpore cells of SOLOv2."""
from solov2.models.solov2 import SOLOv2, SOLOv2Eval, build_model, flatten_levels

__all__ = ["SOLOv2", "SOLOv2Eval", "build_model", "flatten_levels"]
