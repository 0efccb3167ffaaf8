"""`moeops export`: a trained checkpoint to a torch.export program (.pt2) or ONNX (`export_cli`, `export`), through a
static-shape MoE in which every expert runs on every token, masked by the gates (`static_moe`)."""
