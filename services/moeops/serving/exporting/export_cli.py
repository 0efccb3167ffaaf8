"""`moeops export`: a trained checkpoint to a torch.export program (.pt2) or an ONNX model, checked against eager.

Registered on the `moeops` command line (`moeops.cli`). Only click is imported up front; torch, the checkpoint
reader (`moeops.checkpoint`) and onnx load when the command runs.

The checkpoint is what `moeops train` writes: `--checkpoint` is a `step-XXXXXXXX` directory or the directory
holding them (the newest is taken). The architecture comes from the run's resolved config: `--config`, or the
`config.json` that `moeops train --job` writes beside `checkpoints/` (`<work-dir>/<job>/config.json`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import torch

    from moeops.model import Transformer

FORMATS = ("torch-export", "onnx")


@click.command("export")
@click.option("--checkpoint", "checkpoint", type=click.Path(path_type=Path), required=True,
              help="A step-XXXXXXXX checkpoint directory, or the directory of them (the newest is taken).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="torch-export: a torch.export program (.pt2); onnx: an ONNX model.")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The file to write.")
@click.option("--config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="The run's resolved config.json  [default: <run>/config.json beside <run>/checkpoints]")  # fmt: skip
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Fix the batch size  [default: dynamic]")
@click.option("--seq", type=click.IntRange(min=1), default=None,
              help="Fix the sequence length  [default: dynamic, up to the model's seqLen]")  # fmt: skip
@click.option("--opset", type=click.IntRange(min=18), default=None, help="ONNX opset  [default: the exporter's]")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the exported model once and compare its logits with the eager model's.")  # fmt: skip
def export(
    checkpoint: Path,
    fmt: str,
    out: Path,
    config: Path | None,
    batch: int | None,
    seq: int | None,
    opset: int | None,
    check: bool,
) -> None:
    """Export a trained checkpoint for serving (static-shape MoE dispatch; see moeops.serving.exporting.export)."""
    from moeops.checkpoint.layout import CheckpointError, find_run_config, read_architecture, resolve_checkpoint

    try:
        step_dir, step = resolve_checkpoint(checkpoint)
        arch = read_architecture(find_run_config(step_dir, config))
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from exc
    if seq is not None and seq > arch.seq_len:
        raise click.BadParameter(f"{seq} exceeds the model's seqLen ({arch.seq_len})", param_hint="--seq")

    from moeops.checkpoint.weights import load_model
    from moeops.serving.exporting import export as ex

    try:
        model = load_model(step_dir, arch)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from exc

    tokens = ex.example_tokens(model, batch, seq)
    dynamic = {"dynamic_batch": batch is None, "dynamic_seq": seq is None}
    started = time.monotonic()
    try:
        if fmt == "torch-export":
            program = ex.export_program(model, tokens, **dynamic)
            meta = ex.program_meta(model, tokens, **dynamic) | {"checkpoint": str(step_dir), "step": step}
            ex.save_program(program, out, meta)
            detail = ""
        else:
            onnx_export = ex.export_onnx(model, out, tokens, opset=opset, **dynamic)
            detail = f", opset {onnx_export.opset}" + (f", weights in {out}.data" if onnx_export.external_data else "")
    except ImportError as exc:
        raise click.ClickException(f"{exc}: ONNX export needs the serving extra (onnx, onnxscript)") from exc
    shape = f"batch {batch or 'dynamic'}, seq {seq or f'dynamic ≤ {arch.seq_len}'}"
    click.echo(f"exported step {step} ({step_dir}) as {fmt} to {out}: {shape}{detail} "
               f"in {time.monotonic() - started:.1f} s")  # fmt: skip
    if check:
        check_tokens = ex.example_tokens(model, batch or 3, seq or min(5, arch.seq_len))
        error = _max_error(model, fmt, out, check_tokens)
        click.echo(f"check: max |logits - eager| = {error:.2e} on {tuple(check_tokens.shape)}")


def _max_error(model: Transformer, fmt: str, out: Path, tokens_BS: torch.Tensor) -> float:
    import torch

    from moeops.serving.exporting import export as ex

    with torch.no_grad():
        eager = model(tokens_BS).logits_BSV
        if fmt == "torch-export":
            exported = ex.load_program(out)[0].module()(tokens_BS)
        else:
            try:
                import onnxruntime  # type: ignore[import-untyped]
            except ImportError as exc:
                raise click.ClickException(
                    "the check needs onnxruntime (the serving extra), or pass --no-check"
                ) from exc
            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            exported = torch.from_numpy(session.run(["logits"], {"tokens": tokens_BS.numpy()})[0])
    return float((exported - eager).abs().max())
