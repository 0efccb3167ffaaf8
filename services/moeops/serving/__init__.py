"""Serving-side model tooling: static-shape export (torch.export, ONNX) and torch.compile for inference."""
