"""A preallocated key/value cache for incremental decoding: keys and values of every layer, one tensor each.

Why preallocated: decoding appends one position per step, and growing the cache with torch.cat would copy all
of it every token; here a step writes its positions in place and attention reads a view of the filled prefix.

Every row of the batch shares one length (one sequence, or prompts of equal length decoded in lockstep): a
ragged batch would need per-row lengths and padding masks, which this cache does not keep. Every layer is
filled to the same length too: early exit writes the skipped layers' entries from the exiting hidden state
(CALM's state propagation, serving/decoding/decode.py), so a later token never attends to a hole.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moeops.api.v1alpha1.presets import Architecture


class KVCache:
    """Keys and values, shape (L, B, H, capacity, head_dim); positions [0, length) are valid in every layer."""

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if min(layers, batch, heads, head_dim, capacity) < 1:
            raise ValueError(
                f"a KV cache needs positive sizes, got layers={layers} batch={batch} heads={heads}"
                f" head_dim={head_dim} capacity={capacity}"
            )
        shape = (layers, batch, heads, capacity, head_dim)
        self.keys_LBHCd = torch.zeros(shape, dtype=dtype, device=device)
        self.values_LBHCd = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.length = 0
        """Positions filled in every layer: the next token's position."""

    @classmethod
    def for_architecture(
        cls,
        arch: Architecture,
        batch: int,
        capacity: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        """A cache shaped for a model of `arch`; capacity defaults to its context (seq_len: the rotary table
        goes no further)."""
        if capacity is not None and not 1 <= capacity <= arch.seq_len:
            raise ValueError(f"KV cache capacity {capacity} must be between 1 and the model's seq_len ({arch.seq_len})")
        head_dim = arch.d_model // arch.heads
        return cls(arch.layers, batch, arch.heads, head_dim, capacity or arch.seq_len, dtype=dtype, device=device)

    @property
    def batch(self) -> int:
        return int(self.keys_LBHCd.shape[1])

    @property
    def layers(self) -> int:
        return int(self.keys_LBHCd.shape[0])

    def write(self, layer: int, start: int, k_BHSd: Tensor, v_BHSd: Tensor) -> tuple[Tensor, Tensor]:
        """Store positions [start, start+S) of `layer`; return its keys and values for [0, start+S) (views)."""
        stop = start + k_BHSd.shape[2]
        if start < 0 or stop > self.capacity:
            raise ValueError(f"positions [{start}, {stop}) do not fit a KV cache of {self.capacity}")
        if start > self.length:
            # A gap would leave zeros that later tokens attend to as if they were keys.
            raise ValueError(f"write at position {start} leaves a gap after the filled length {self.length}")
        self.keys_LBHCd[layer, :, :, start:stop] = k_BHSd
        self.values_LBHCd[layer, :, :, start:stop] = v_BHSd
        return self.keys_LBHCd[layer, :, :, :stop], self.values_LBHCd[layer, :, :, :stop]

    def advance(self, positions: int) -> None:
        """Mark `positions` more positions filled (in every layer) once a step has written them."""
        if positions < 0 or self.length + positions > self.capacity:
            raise ValueError(f"cannot advance {positions} from {self.length} in a KV cache of {self.capacity}")
        self.length += positions

    def reset(self) -> None:
        """Reuse the buffers for a new sequence (stale entries beyond `length` are never read)."""
        self.length = 0
