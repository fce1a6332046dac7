"""Deployment: export to MindIR / ONNX (`export`), the sidecar JSON (`sidecar`), running an export (`exported`)."""
