"""Confidence rules and the exit policy of adaptive early exit (CALM, Schuster et al. 2022).

A token may leave the network after layer l (1-based) when the exit head's confidence in its prediction reaches
the threshold. The exit head is the model's own final norm and LM head applied to layer l's hidden state
(LayerSkip's shared head, Transformer.exit_logits): no extra parameters, and trained for it by the early-exit
loss (moeops.trainer.early_exit_loss). Two of CALM's measures, both in [0, 1] and cheap given the logits:

  softmax-max   the largest softmax probability;
  top2-margin   the largest minus the second largest probability (CALM's "softmax response" margin, the one it
                found best calibrated).

CALM's third measure (hidden-state saturation, the cosine of consecutive layers' states) needs no head but
does not rank by what the token would be; it is not offered (EarlyExitSpec's rule names these two).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from torch import Tensor

from moeops.api.v1alpha1.inferenceservice import EarlyExitSpec

Rule = Literal["softmax-max", "top2-margin"]
RULES: tuple[Rule, ...] = ("softmax-max", "top2-margin")


def softmax_max(logits: Tensor) -> Tensor:
    """Largest softmax probability over the last dimension (in fp32: bf16 probabilities are too coarse to
    compare against a threshold like 0.95)."""
    return logits.float().softmax(dim=-1).amax(dim=-1)


def top2_margin(logits: Tensor) -> Tensor:
    """Largest minus second-largest softmax probability over the last dimension."""
    top2 = logits.float().softmax(dim=-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


CONFIDENCE: dict[Rule, Callable[[Tensor], Tensor]] = {"softmax-max": softmax_max, "top2-margin": top2_margin}


def confidence(logits: Tensor, rule: Rule) -> Tensor:
    """The rule's confidence of each prediction: logits (..., V) → (...)."""
    try:
        measure = CONFIDENCE[rule]
    except KeyError:
        raise ValueError(f"unknown early-exit rule {rule!r}; known: {', '.join(RULES)}") from None
    return measure(logits)


@dataclass(frozen=True)
class ExitPolicy:
    """When a token may leave: at layer ≥ min_layer (1-based) whose exit confidence ≥ threshold. The same
    names and meanings as the InferenceService's EarlyExitSpec; a request may override them (`override`)."""

    enabled: bool = True
    rule: Rule = "softmax-max"
    threshold: float = 0.9
    min_layer: int = 1

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown early-exit rule {self.rule!r}; known: {', '.join(RULES)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"early-exit threshold must be in [0, 1], got {self.threshold}")
        if self.min_layer < 1:
            raise ValueError(f"early-exit min_layer is 1-based and at least 1, got {self.min_layer}")

    @classmethod
    def from_spec(cls, spec: EarlyExitSpec) -> ExitPolicy:
        return cls(enabled=spec.enabled, rule=spec.rule, threshold=spec.threshold, min_layer=spec.min_layer)

    def override(
        self, *, threshold: float | None = None, rule: Rule | None = None, min_layer: int | None = None
    ) -> ExitPolicy:
        """This policy with a request's own settings where given (validated like the service's)."""
        return replace(
            self,
            threshold=self.threshold if threshold is None else threshold,
            rule=self.rule if rule is None else rule,
            min_layer=self.min_layer if min_layer is None else min_layer,
        )

    @property
    def never_exits(self) -> bool:
        """Disabled, or threshold 1.0: "1.0 never exits" holds even where a probability rounds to exactly 1.0
        in fp32, and the decoder then skips the exit heads' cost altogether."""
        return not self.enabled or self.threshold >= 1.0

    def may_exit_after(self, layer: int, layers: int) -> bool:
        """Whether to look at the exit head after 1-based `layer` of `layers` (the last layer is the model's
        own output, not an early exit)."""
        return not self.never_exits and self.min_layer <= layer < layers


NEVER_EXIT = ExitPolicy(enabled=False)
"""The full model: the baseline early exit is measured against."""
