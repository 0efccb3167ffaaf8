"""The router computes in fp32 whatever autocast does (model/moe.py): under bf16 autocast F.linear would cast its
fp32 inputs back to bf16."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moeops.model.moe import Router


def test_router_scores_stay_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    router = Router(dim=32, experts=8, top_k=2)
    x_TD = torch.randn(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.linear(x_TD, router.gate.weight).dtype == torch.bfloat16  # what autocast does to a plain linear
        scores_TE, probs_TE, _, _ = router(x_TD)
    assert scores_TE.dtype == probs_TE.dtype == torch.float32
    torch.testing.assert_close(scores_TE, router(x_TD)[0], rtol=0, atol=0)  # the same as without autocast
