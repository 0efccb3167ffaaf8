"""The model server (`moeops serve`: OpenAI-compatible HTTP over a trained checkpoint) and static-shape export
(`moeops export`: torch.export, ONNX)."""
