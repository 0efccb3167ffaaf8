"""`moeops export` on a checkpoint in the layout `moeops train --job` writes: <run>/config.json beside
<run>/checkpoints/step-XXXXXXXX, saved by the trainer's own checkpoint.save."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from moeops.api.v1alpha1.presets import Architecture
from moeops.local import local_config
from moeops.model import Transformer
from moeops.serving.exporting.export import load_program
from moeops.serving.exporting.export_cli import export
from moeops.trainer import checkpoint
from moeops.trainer.distributed import World

REPO = Path(__file__).resolve().parents[2]
TINY = Architecture(layers=1, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=16, vocab_size=64, seq_len=16)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Transformer]:
    """A run directory with a one-step checkpoint of a tiny model, and that model."""
    run_dir = tmp_path_factory.mktemp("run")
    config = local_config(REPO / "examples" / "moe-debug-trainingjob.yaml", 1, run_dir / "checkpoints")
    config = config.model_copy(update={"architecture": TINY})
    (run_dir / "config.json").write_text(config.model_dump_json(by_alias=True, indent=2))
    torch.manual_seed(0)
    model = Transformer(TINY)
    optimizer = torch.optim.AdamW(model.parameters())
    world = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with warnings.catch_warnings():  # DCP: "assuming the intent is to save in a single process": it is
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
        checkpoint.save(run_dir / "checkpoints", 1, model, optimizer, world, {"loss": 1.0, "job": "tiny"}, keep=2)
    return run_dir, model.eval()


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(export, [str(a) for a in args])


def tokens(batch: int, seq: int) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(3))


@pytest.mark.slow
def test_torch_export_of_the_newest_checkpoint(run: tuple[Path, Transformer], tmp_path: Path) -> None:
    run_dir, model = run
    out = tmp_path / "model.pt2"
    result = invoke("--checkpoint", run_dir / "checkpoints", "--format", "torch-export", "--out", out)
    assert result.exit_code == 0, result.output
    assert "exported step 1" in result.output and "check: max |logits - eager|" in result.output
    program, meta = load_program(out)
    assert meta["step"] == 1 and meta["architecture"]["dModel"] == TINY.d_model
    x = tokens(3, 11)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x).logits_BSV, rtol=0, atol=1e-5)


@pytest.mark.slow  # ONNX export; the torch.export one above stays in the fast tier
def test_onnx_with_fixed_shapes_from_a_step_directory(run: tuple[Path, Transformer], tmp_path: Path) -> None:
    run_dir, _ = run
    out = tmp_path / "onnx" / "model.onnx"
    step = run_dir / "checkpoints" / "step-00000001"
    result = invoke("--checkpoint", step, "--format", "onnx", "--out", out, "--batch", "1", "--seq", "8")
    assert result.exit_code == 0, result.output
    assert "batch 1, seq 8" in result.output and "opset" in result.output and out.is_file()
    error = float(result.output.split("= ")[-1].split()[0])
    assert error < 1e-4


def test_bad_input_is_an_error_message_not_a_traceback(run: tuple[Path, Transformer], tmp_path: Path) -> None:
    run_dir, _ = run
    out = tmp_path / "m.pt2"
    fmt = ("--format", "torch-export", "--out", out)

    def fails(*args: str | Path, code: int = 1) -> str:
        result = invoke(*args, *fmt)
        assert result.exit_code == code and isinstance(result.exception, SystemExit), result.output
        return result.output

    assert "no such checkpoint directory" in fails("--checkpoint", tmp_path / "missing")
    assert "not a checkpoint" in fails("--checkpoint", tmp_path)
    lonely = tmp_path / "lonely"
    (lonely / "step-00000001").mkdir(parents=True)
    (lonely / "step-00000001" / "meta.json").write_text("{}")
    assert "give the run's resolved config with --config" in fails("--checkpoint", lonely)

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not a readable JSON config" in fails("--checkpoint", run_dir / "checkpoints", "--config", bad)
    bad.write_text(json.dumps({"architecture": {"layers": 0}}))
    assert "invalid architecture" in fails("--checkpoint", run_dir / "checkpoints", "--config", bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"architecture": TINY.model_copy(update={"d_model": 64}).model_dump(by_alias=True)}))
    assert "cannot load the model weights" in fails("--checkpoint", run_dir / "checkpoints", "--config", other)
    assert "cannot load the model weights" in fails("--checkpoint", lonely, "--config", run_dir / "config.json")
    assert "exceeds the model's seqLen" in fails("--checkpoint", run_dir / "checkpoints", "--seq", "17", code=2)
    assert not out.exists()


def test_registered_on_the_moeops_command_line() -> None:
    from moeops.cli import main

    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0 and "--checkpoint" in result.output
