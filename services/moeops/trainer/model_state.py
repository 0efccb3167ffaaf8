"""What a rank holds of the model's training state: parameters, gradients and optimizer state, in bytes.

The measured side of the planner's memory model (`moeops.operator.planning.memory.model_state_bytes_per_gpu`):
tests/integration/test_memory_vs_trainer.py compares the two in several layouts, benchmarks/model_state_bytes.py
prints them side by side. Sharded tensors (FSDP, tensor or expert parallelism) count with their local part only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .parallelize import offloaded_params
from .tensor_parallel import local


def _bytes(t: Tensor) -> int:
    held = local(t)
    return held.numel() * held.element_size()


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """This rank's bytes of `params`, `grads` (those that exist now) and `optimizer` state, their `total`, and of
    that total what lives in `host` memory (FSDP2's offloaded shards, with their gradients and optimizer state)
    and on the `device` (what the planner's figure counts)."""
    params = sum(_bytes(p) for p in model.parameters())
    grads = sum(_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    states = sum(_state_bytes(optimizer, p) for p in model.parameters())
    offloaded = offloaded_params(model)
    host = sum(
        _bytes(p) + (_bytes(p.grad) if p.grad is not None else 0) + _state_bytes(optimizer, p)
        for p in model.parameters()
        if id(p) in offloaded
    )
    total = params + grads + states
    return {"params": params, "grads": grads, "optimizer": states, "total": total, "host": host, "device": total - host}


def _state_bytes(optimizer: torch.optim.Optimizer, param: Tensor) -> int:
    return sum(_bytes(v) for v in optimizer.state.get(param, {}).values() if isinstance(v, Tensor))
