"""Export a trained model for serving: torch.export (.pt2) and ONNX.

What is exported is the logits forward in eval mode: tokens (B, S) int64 → logits (B, S, V) fp32, with the batch
and sequence dimensions dynamic (torch.export.Dim; the sequence at most the architecture's seq_len, the length of
the rotary cache) or fixed, one by one.

Dynamic to static graph. The eager MoE layer cannot be traced as it is: its dispatch sorts the T·K token→expert
assignments and runs each expert on its own rows, so the rows per expert are *data* (bincount's output size, the split
sizes, a host sync on the counts) and torch.export stops on a data-dependent shape. The exporter therefore traces a copy
of the model whose MoE layers are `StaticMoE` (moeops.serving.exporting.static_moe): the same router (scores, top-k,
renormalised gates, selection bias), then every expert on every token as batched matmuls over the stacked expert
weights, combined with a (T, E) weight matrix that holds the K gates and exact zeros elsewhere. Its shapes depend only
on T, so one graph serves every batch and sequence length, in torch.export and ONNX (MatMul, TopK, ScatterElements: no
Loop/If). The copy shares the parameters: the model being exported keeps its eager, trainable MoE layers, and training
numerics are untouched.

The trade-off. The dense masked formulation costs E/K times the routed experts' FLOPs and E·T·F activations:
2x for moe-debug (4 experts, top-2), 4x for 8 experts top-2. Measured per layer on 2 busy CPU cores (best of
runs, static / eager time): prefill T=1024: 4.2x at moe-debug's size, 2.3x at d=512, F=1024, 8 experts; decode
T=8: 0.4x and 0.85x (the dense form skips the sort, the split and the host sync). The alternative static
formulation gathers each token's K expert weight matrices (w[experts_TK]: (T, K, F, D) per projection) and
costs exactly K experts of FLOPs, but moves T·K·3·F·D weights: cheap for decoding (T = batch) and prohibitive
for a prefill (T = 1024, F = 1024, D = 512: 4 GiB per projection). With the few experts of the presets the
dense form is the reasonable one for both; a many-expert model would want the gather for decode, or a grouped
matmul (static shapes, data offsets) where a runtime has one. Serving is dropless: a capacity factor is a
training device and StaticMoE ignores it (the trainer's own evaluation builds the model without one).

Parity: StaticMoE takes the same router decisions as the eager layer, so logits agree to fp32 summation order
(tests/unit/test_serving_export.py: ≤1e-5 eager vs static and torch.export; ≤1e-4 in onnxruntime).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

from moeops.model import Transformer
from moeops.serving.exporting.static_moe import static_copy

META_FILE = "moeops.json"
"""Inside a .pt2: the architecture and the exported dimensions, so a server needs nothing else."""
EXAMPLE_BATCH, EXAMPLE_SEQ = 2, 8
"""Example sizes for tracing dynamic dimensions: above 1 (a size-1 example would specialise) and different
from each other (equal sizes would be assumed equal)."""
EXTERNAL_DATA_BYTES = 1 << 30
"""ONNX weights above this go to a `<file>.data` beside the model (protobuf's 2 GiB limit)."""


class Logits(nn.Module):
    """tokens (B, S) → logits (B, S, V): the serving forward, without the training losses and counts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens_BS: Tensor) -> Tensor:
        logits: Tensor = self.model(tokens_BS).logits_BSV
        return logits


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    """The default-domain opset the file declares."""
    external_data: bool
    """Whether the weights are in `<path>.data`."""


def serving_module(model: Transformer) -> Logits:
    """The static-shape logits forward of `model` (sharing its weights), in eval mode."""
    return Logits(static_copy(model)).eval()


def example_tokens(model: Transformer, batch: int | None = None, seq: int | None = None) -> Tensor:
    """Random tokens to trace with: (batch, seq), defaults EXAMPLE_BATCH × min(EXAMPLE_SEQ, seq_len)."""
    arch = model.arch
    shape = (batch or EXAMPLE_BATCH, seq or min(EXAMPLE_SEQ, arch.seq_len))
    return torch.randint(0, arch.vocab_size, shape, generator=torch.Generator().manual_seed(0))


def dynamic_shapes(
    model: Transformer, tokens_BS: Tensor, *, dynamic_batch: bool, dynamic_seq: bool
) -> tuple[dict[int, Any]] | None:
    """torch.export's dynamic_shapes for the tokens argument; None when both dimensions are fixed."""
    if tokens_BS.dim() != 2 or tokens_BS.dtype != torch.int64:
        raise ValueError(f"example tokens must be (batch, seq) int64, got {tuple(tokens_BS.shape)} {tokens_BS.dtype}")
    B, S = tokens_BS.shape
    seq_len = model.arch.seq_len
    if seq_len < S:
        raise ValueError(f"example sequence length {S} exceeds the model's seq_len {seq_len}")
    for dynamic, size, name in ((dynamic_batch, B, "batch"), (dynamic_seq, S, "sequence")):
        if dynamic and size < 2:
            raise ValueError(f"a dynamic {name} dimension needs an example size of at least 2 (got {size})")
    if dynamic_batch and dynamic_seq and B == S:
        raise ValueError(f"dynamic batch and sequence need different example sizes (got {B} for both)")
    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = Dim("batch", min=1)
    if dynamic_seq:
        dims[1] = Dim("seq", min=1, max=seq_len)
    return (dims,) if dims else None


def export_program(
    model: Transformer,
    example_tokens_BS: Tensor | None = None,
    *,
    dynamic_batch: bool = True,
    dynamic_seq: bool = True,
) -> ExportedProgram:
    """torch.export of the static-shape logits forward. A fixed dimension takes the example's size."""
    tokens = example_tokens(model) if example_tokens_BS is None else example_tokens_BS
    shapes = dynamic_shapes(model, tokens, dynamic_batch=dynamic_batch, dynamic_seq=dynamic_seq)
    with torch.no_grad():
        return torch.export.export(serving_module(model), (tokens,), dynamic_shapes=shapes)


def program_meta(model: Transformer, tokens_BS: Tensor, *, dynamic_batch: bool, dynamic_seq: bool) -> dict[str, Any]:
    """What a server needs to know about an exported program besides the graph."""
    return {
        "architecture": model.arch.model_dump(by_alias=True),
        "batch": None if dynamic_batch else int(tokens_BS.shape[0]),
        "seq": None if dynamic_seq else int(tokens_BS.shape[1]),
        "input": "tokens (batch, seq) int64",
        "output": "logits (batch, seq, vocab) float32",
        "torch": torch.__version__,
    }


def save_program(program: ExportedProgram, path: Path, meta: dict[str, Any] | None = None) -> None:
    """torch.export.save to a .pt2 file, with `meta` as its META_FILE."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, path, extra_files={META_FILE: json.dumps(meta or {})})


def load_program(path: Path) -> tuple[ExportedProgram, dict[str, Any]]:
    """A .pt2 written by save_program: the program and its meta ({} if none)."""
    extra = {META_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    meta: dict[str, Any] = json.loads(extra[META_FILE]) if extra[META_FILE] else {}
    return program, meta


def export_onnx(
    model: Transformer,
    path: Path,
    example_tokens_BS: Tensor | None = None,
    *,
    dynamic_batch: bool = True,
    dynamic_seq: bool = True,
    opset: int | None = None,
    external_data: bool | None = None,
) -> OnnxExport:
    """ONNX through torch.onnx.export(dynamo=True) of the static-shape logits forward, checked with
    onnx.checker. Input `tokens` (batch, seq) int64, output `logits`; dynamic dimensions as in export_program.
    external_data None: only when the weights exceed EXTERNAL_DATA_BYTES. opset None: the exporter's default."""
    import onnx

    tokens = example_tokens(model) if example_tokens_BS is None else example_tokens_BS
    shapes = dynamic_shapes(model, tokens, dynamic_batch=dynamic_batch, dynamic_seq=dynamic_seq)
    if external_data is None:
        external_data = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            serving_module(model),
            (tokens,),
            str(path),
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=["tokens"],
            output_names=["logits"],
            opset_version=opset,
            external_data=external_data,
            verbose=False,
        )
    onnx.checker.check_model(str(path))  # by path: also checks external data
    declared = onnx.load(str(path), load_external_data=False).opset_import
    return OnnxExport(path, next(o.version for o in declared if o.domain in ("", "ai.onnx")), external_data)
