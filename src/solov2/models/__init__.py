"""SOLOv2's MindSpore cells (`solov2.models.solov2`: build_model, SOLOv2Eval, ...) and its NumPy post-processing
(`solov2.models.postprocess`). Nothing is imported here: the post-processing, which an exported ONNX model's
predictor uses, needs no MindSpore."""
