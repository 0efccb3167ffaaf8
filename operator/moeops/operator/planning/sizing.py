"""Model architecture resolution and parameter counts (pure arithmetic, no torch).

Counts assume the architecture the trainer builds: pre-norm decoder blocks with multi-head attention
(Q, K, V, O projections of d×d), a linear router (d×E), E routed SwiGLU experts and S shared ones (3·d·F each),
two RMSNorms per block, untied input embedding and output head (V×d each) and a final norm.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeops.api.v1alpha1.presets import PRESETS, Architecture
from moeops.api.v1alpha1.trainingjob import ModelSpec

from ..errors import InvalidSpec

_OVERRIDABLE = (
    "layers",
    "d_model",
    "heads",
    "experts",
    "top_k",
    "ffn_hidden",
    "shared_experts",
    "vocab_size",
    "seq_len",
)


def resolve_architecture(spec: ModelSpec) -> Architecture:
    """The preset, with any explicitly given field overriding it. Raises InvalidSpec when inconsistent."""
    base = PRESETS[spec.preset].model_dump() if spec.preset else {}
    overrides = {name: getattr(spec, name) for name in _OVERRIDABLE if getattr(spec, name) is not None}
    fields = {**base, **overrides}
    missing = [name for name in ("layers", "d_model", "heads", "experts", "top_k", "ffn_hidden") if name not in fields]
    if missing:
        raise InvalidSpec("InvalidModel", f"spec.model: missing {', '.join(missing)} (or set a preset)")
    if fields["top_k"] > fields["experts"]:
        raise InvalidSpec(
            "InvalidModel",
            f"spec.model.topK ({fields['top_k']}) must be at most the number of experts ({fields['experts']})",
        )
    if fields["d_model"] % fields["heads"]:
        raise InvalidSpec(
            "InvalidModel",
            f"spec.model.dModel ({fields['d_model']}) must be a multiple of heads ({fields['heads']})",
        )
    return Architecture(**fields)


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts of an architecture."""

    dense_params: int
    """Everything that every token uses: embeddings, attention, norms, router, shared experts, head."""
    expert_params: int
    """All routed experts of all layers."""
    active_expert_params: int
    """The routed expert parameters one token uses (top_k experts per layer)."""

    @property
    def total_params(self) -> int:
        return self.dense_params + self.expert_params

    @property
    def active_params(self) -> int:
        return self.dense_params + self.active_expert_params


def model_size(arch: Architecture) -> ModelSize:
    d, f = arch.d_model, arch.ffn_hidden
    per_expert = 3 * d * f
    attention = 4 * d * d
    per_layer_dense = attention + d * arch.experts + arch.shared_experts * per_expert + 2 * d
    dense = arch.layers * per_layer_dense + 2 * arch.vocab_size * d + d
    return ModelSize(
        dense_params=dense,
        expert_params=arch.layers * arch.experts * per_expert,
        active_expert_params=arch.layers * arch.top_k * per_expert,
    )
