"""Learning-rate schedule: linear warmup, then cosine decay to a floor (pure arithmetic)."""

from __future__ import annotations

import math

MIN_LR_RATIO = 0.1  # decay to 10% of the peak, as is common for LLM pre-training


def lr_at(step: int, *, peak: float, warmup: int, total: int, min_ratio: float = MIN_LR_RATIO) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
