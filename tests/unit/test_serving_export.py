"""Export for serving: the static-shape MoE against the eager one, torch.export and ONNX against eager logits, on
shapes other than the traced example (the dynamic dimensions really work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from moeops.api.v1alpha1.presets import Architecture
from moeops.model import MoE, Transformer
from moeops.serving.exporting.export import (
    export_onnx,
    export_program,
    load_program,
    program_meta,
    save_program,
)
from moeops.serving.exporting.static_moe import StaticMoE, static_copy

TINY = Architecture(layers=2, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=16, shared_experts=1,
                    vocab_size=64, seq_len=16)  # fmt: skip
SHAPES = [(1, 1), (3, 5), (5, 16), (1, 16)]
"""Batch × sequence sizes other than the example (2, 8), down to 1 and up to seq_len."""


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    for moe in (m for m in model.modules() if isinstance(m, MoE)):  # routing differs from plain top-k of probs
        moe.router.selection_bias_E.copy_(torch.tensor([0.02, -0.01, 0.0, 0.01]))
    return model


def tokens(batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def eager_logits(model: Transformer, tokens_BS: torch.Tensor) -> torch.Tensor:
    logits: torch.Tensor = model(tokens_BS).logits_BSV
    return logits


def make_moe(experts: int, **kwargs: Any) -> MoE:
    torch.manual_seed(0)
    moe = MoE(32, 16, experts=experts, top_k=2, **kwargs)
    for w in (moe.experts.w1_EFD, moe.experts.w2_EDF, moe.experts.w3_EFD):  # MoE leaves them uninitialised
        torch.nn.init.normal_(w, std=0.1)
    return moe


def test_static_moe_matches_the_eager_layer() -> None:
    moe = make_moe(8, shared_experts=1)
    moe.router.selection_bias_E.copy_(torch.linspace(-0.05, 0.05, 8))
    static = StaticMoE(moe, losses=True)
    x_TD = torch.randn(40, 32)
    with torch.no_grad():
        eager, fixed = moe(x_TD), static(x_TD)
    torch.testing.assert_close(fixed.out_TD, eager.out_TD, rtol=0, atol=1e-5)
    torch.testing.assert_close(fixed.aux_loss, eager.aux_loss)
    torch.testing.assert_close(fixed.z_loss, eager.z_loss)
    assert torch.equal(fixed.tokens_per_expert_E, eager.tokens_per_expert_E)
    assert static.router is moe.router and static.experts is moe.experts  # shared, not copied
    with torch.no_grad():
        serving = StaticMoE(moe)(x_TD)  # without the losses: the same output, zeros for the rest
    torch.testing.assert_close(serving.out_TD, fixed.out_TD, rtol=0, atol=0)
    assert float(serving.aux_loss) == 0.0 and not serving.tokens_per_expert_E.any()


def test_static_copy_shares_weights_and_leaves_the_model_eager(model: Transformer) -> None:
    static = static_copy(model)
    assert sum(isinstance(m, StaticMoE) for m in static.modules()) == TINY.layers
    assert not any(isinstance(m, StaticMoE) for m in model.modules())
    assert static.embedding.weight is model.embedding.weight and not static.training
    x = tokens(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(static(x).logits_BSV, eager_logits(model, x), rtol=0, atol=1e-5)


def test_static_moe_is_dropless_whatever_the_capacity_factor() -> None:
    moe = make_moe(4, capacity_factor=0.5)
    moe.router.selection_bias_E[0] = 10.0  # everyone picks expert 0: the eager layer drops, the static one not
    static = StaticMoE(moe)
    x_TD = torch.randn(20, 32)
    with torch.no_grad():
        dropped = moe(x_TD).out_TD
        moe.capacity_factor = None
        dropless = moe(x_TD).out_TD
        torch.testing.assert_close(static(x_TD).out_TD, dropless, rtol=0, atol=1e-5)
    assert not torch.allclose(dropped, dropless)


@pytest.mark.slow  # torch.export with dynamic shapes; the fixed-sequence export below stays in the fast tier
def test_export_program_has_dynamic_batch_and_sequence(model: Transformer, tmp_path: Path) -> None:
    program = export_program(model)  # traced at (2, 8)
    run = program.module()
    for batch, seq in SHAPES:
        x = tokens(batch, seq)
        torch.testing.assert_close(run(x), eager_logits(model, x), rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="Guard failed"):
        run(tokens(1, TINY.seq_len + 1))  # beyond the rotary cache: refused by the program's guards

    path = tmp_path / "model.pt2"
    meta = program_meta(model, tokens(2, 8), dynamic_batch=True, dynamic_seq=True)
    save_program(program, path, meta)
    loaded, loaded_meta = load_program(path)
    assert loaded_meta["architecture"]["vocabSize"] == TINY.vocab_size and loaded_meta["seq"] is None
    x = tokens(3, 5, seed=7)
    torch.testing.assert_close(loaded.module()(x), eager_logits(model, x), rtol=0, atol=1e-5)


def test_export_program_with_a_fixed_sequence(model: Transformer) -> None:
    program = export_program(model, tokens(2, 16), dynamic_seq=False)
    x = tokens(4, 16)
    torch.testing.assert_close(program.module()(x), eager_logits(model, x), rtol=0, atol=1e-5)
    with pytest.raises(Exception):  # noqa: B017 - the guard's error type is torch's business
        program.module()(tokens(4, 8))


def test_example_sizes_that_would_specialise_are_refused(model: Transformer) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        export_program(model, tokens(1, 8))
    with pytest.raises(ValueError, match="different example sizes"):
        export_program(model, tokens(4, 4))
    with pytest.raises(ValueError, match="exceeds"):
        export_program(model, tokens(2, 17))


@pytest.mark.slow  # ONNX export
def test_onnx_in_onnxruntime_matches_eager(model: Transformer, tmp_path: Path) -> None:
    import onnxruntime  # type: ignore[import-untyped]

    exported = export_onnx(model, tmp_path / "model.onnx")
    assert exported.opset >= 18 and not exported.external_data
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["tokens"]
    for batch, seq in SHAPES:
        x = tokens(batch, seq)
        (logits,) = session.run(["logits"], {"tokens": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), eager_logits(model, x), rtol=0, atol=1e-4)
