"""The distributed trainer: one process per GPU (or CPU rank), driven by the operator's resolved config.

Training infrastructure only; the model's architecture lives in `moeops.model`.
"""
