"""The MoE transformer: architecture only, no training infrastructure (that is `moeops.trainer`).

Tensor names carry their shape, as in torchtitan. Legend:
  B batch, S sequence, T tokens (B·S), D model width, F expert hidden width, E routed experts,
  K experts per token (top-k), A token→expert assignments (T·K), H heads, V vocabulary.
"""

from .moe import GroupedExperts, MoE, MoEOutput, Router
from .transformer import ModelOutput, Transformer

__all__ = ["GroupedExperts", "MoE", "MoEOutput", "ModelOutput", "Router", "Transformer"]
