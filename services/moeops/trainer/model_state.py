"""What a rank holds of the model's training state: parameters, gradients and optimizer state, in bytes.

The measured side of the planner's memory model (`moeops.operator.planning.memory.model_state_bytes_per_gpu`):
tests/integration/test_memory_vs_trainer.py compares the two in several layouts, benchmarks/model_state_bytes.py
prints them side by side. Sharded tensors (FSDP, tensor or expert parallelism) count with their local part only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .tensor_parallel import local


def _bytes(t: Tensor) -> int:
    held = local(t)
    return held.numel() * held.element_size()


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """This rank's bytes of `params`, `grads` (those that exist now) and `optimizer` state, and their `total`."""
    params = sum(_bytes(p) for p in model.parameters())
    grads = sum(_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    states = sum(_bytes(v) for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor))
    return {"params": params, "grads": grads, "optimizer": states, "total": params + grads + states}
