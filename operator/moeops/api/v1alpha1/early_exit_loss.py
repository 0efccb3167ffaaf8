"""The early-exit loss of a MoETrainingJob (spec.training.earlyExit): training the exit heads that an
InferenceService's adaptive early exit (spec.earlyExit) reads.

LayerSkip (Elhoushi et al. 2024) adds to the final layer's cross-entropy the cross-entropy of the shared LM head
(final norm + head) applied to earlier layers' hidden states. Here:

    loss = CE_L + lossWeight · Σ_{l = minLayer}^{L-1} s_l · CE_l,     s_l = l / Σ_{m = minLayer}^{L-1} m

The per-layer scales sum to 1, so lossWeight is the exit losses' total weight relative to the final loss,
whatever the depth. They rise with depth as LayerSkip's do (deeper exits predict better and are the ones
taken most; heavy weight on shallow ones pulls the shared representation away from the final layer), but
linearly rather than LayerSkip's quadratic: with the quadratic, layer 1 of an 8-layer model gets 1/84 of the
exit loss, too little to train the first exit the serving side allows by default (minLayer 1).
"""

from __future__ import annotations

from pydantic import Field

from .common import KubeModel


class EarlyExitLossSpec(KubeModel):
    """LayerSkip's early-exit loss through the shared head (lossWeight 0 trains the final layer alone)."""

    loss_weight: float = Field(
        default=0.0,
        ge=0.0,
        le=10.0,
        description="Total weight of the exit losses relative to the final layer's cross-entropy; 0 disables."
        " Needs all layers on one rank: not supported with pipeline parallelism.",
    )
    min_layer: int = Field(
        default=1,
        ge=1,
        le=511,
        description="First layer (1-based) whose exit is trained; from it to the next-to-last layer, each"
        " exit's share of the loss grows linearly with its depth. Less than model.layers.",
    )
