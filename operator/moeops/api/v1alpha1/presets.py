"""Named model architectures a MoETrainingJob can ask for with `spec.model.preset`.

The sizes follow the seed's range (MoE pays off from 10B to 100B parameters) plus two small ones for tests and
single-machine runs. Total parameter counts are computed in `moeops.operator.planning.sizing`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .common import KubeModel

PresetName = Literal["moe-debug", "moe-small", "moe-1b", "moe-10b", "moe-100b"]


class Architecture(KubeModel):
    """A fully resolved decoder-only MoE transformer: what the trainer builds."""

    layers: int = Field(ge=1, le=512, description="Transformer blocks; every block's FFN is an MoE layer.")
    d_model: int = Field(ge=8, le=65536, description="Hidden size.")
    heads: int = Field(ge=1, le=512, description="Attention heads; must divide dModel.")
    experts: int = Field(ge=1, le=1024, description="Routed experts per MoE layer.")
    top_k: int = Field(ge=1, le=64, description="Experts each token is routed to; at most `experts`.")
    ffn_hidden: int = Field(ge=8, le=262144, description="Hidden size of each expert's SwiGLU FFN.")
    shared_experts: int = Field(default=0, ge=0, le=8, description="Always-active experts (DeepSeek-style).")
    vocab_size: int = Field(default=32000, ge=2, le=1048576, description="Tokenizer vocabulary size.")
    seq_len: int = Field(default=2048, ge=8, le=1048576, description="Training context length in tokens.")

    @model_validator(mode="after")
    def _consistent(self) -> Architecture:
        # The CRD's CEL rules check these on the spec; a runtime config file is checked here (exit 78, not a crash).
        if self.top_k > self.experts:
            raise ValueError(f"topK ({self.top_k}) must be at most experts ({self.experts})")
        if self.d_model % self.heads:
            raise ValueError(f"dModel ({self.d_model}) must be a multiple of heads ({self.heads})")
        return self


PRESETS: dict[str, Architecture] = {
    "moe-debug": Architecture(
        layers=2, d_model=64, heads=4, experts=4, top_k=2, ffn_hidden=128, vocab_size=512, seq_len=64
    ),
    "moe-small": Architecture(
        layers=8, d_model=512, heads=8, experts=8, top_k=2, ffn_hidden=1024, vocab_size=32000, seq_len=1024
    ),
    "moe-1b": Architecture(
        layers=16,
        d_model=1024,
        heads=16,
        experts=16,
        top_k=2,
        ffn_hidden=1408,
        vocab_size=32000,
        seq_len=2048,
    ),
    "moe-10b": Architecture(
        layers=28,
        d_model=2560,
        heads=20,
        experts=16,
        top_k=2,
        ffn_hidden=2816,
        vocab_size=32000,
        seq_len=4096,
    ),
    "moe-100b": Architecture(
        layers=60,
        d_model=5120,
        heads=40,
        experts=64,
        top_k=4,
        ffn_hidden=1536,
        shared_experts=1,
        vocab_size=64000,
        seq_len=4096,
    ),
}
