"""SOLOv2 instance segmentation for MindSpore 2.x."""
__version__ = "0.1.0"
