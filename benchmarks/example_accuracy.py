"""The example job's learning curve: train a MoETrainingJob manifest with `moeops train`, checkpointing every
--every steps (and keeping them all), then score every checkpoint with the trainer's own evaluation (greedy,
exact match of the answer on held-out prompts per domain) and print a markdown table; --png draws it.

Only the checkpoint interval and retention differ from the manifest, so the run trains exactly what
`moeops train --job MANIFEST` trains (the data, init and schedule are functions of the spec and the seed).

    .venv/bin/python benchmarks/example_accuracy.py                       # the example job, 2 ranks (~3 min)
    .venv/bin/python benchmarks/example_accuracy.py --png docs/example-accuracy.png
    .venv/bin/python benchmarks/example_accuracy.py --steps 40 --every 20 --eval-per-domain 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from moeops.api.v1alpha1.runtime import TrainingRuntimeConfig
from moeops.data.synthetic import SyntheticCorpus
from moeops.trainer.corpus import build_corpus
from moeops.trainer.loop import evaluate

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_DIR = re.compile(r"^step-(\d+)$")
LOSS_WINDOW = 20
"""Steps averaged into the loss shown at a checkpoint (one step's answer-token loss is noisy)."""


def curve_manifest(manifest: dict[str, Any], every: int, steps: int | None) -> dict[str, Any]:
    """The manifest with a checkpoint every `every` steps, all kept (and optionally fewer steps)."""
    spec = manifest["spec"]
    if steps is not None:
        spec["training"]["steps"] = steps
    total = spec["training"]["steps"]
    spec["checkpoint"] = {**spec.get("checkpoint", {}), "intervalSteps": every, "keep": total // every + 1}
    return manifest


def mean_loss_up_to(losses: dict[int, float], step: int) -> float:
    window = [loss for s, loss in losses.items() if step - LOSS_WINDOW < s <= step]
    return statistics.fmean(window) if window else float("nan")


def markdown_table(rows: list[dict[str, Any]], domains: tuple[str, ...]) -> str:
    lines = [
        "| step | loss | " + " | ".join(domains) + " |",
        "|---|---|" + "---|" * len(domains),
    ]
    for row in rows:
        scores = " | ".join(f"{row[d]:.2f}" for d in domains)
        lines.append(f"| {row['step']} | {row['loss']:.3f} | {scores} |")
    return "\n".join(lines)


def plot(
    rows: list[dict[str, Any]], losses: dict[int, float], domains: tuple[str, ...], path: Path, title: str
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 3.6))
    FigureCanvasAgg(figure)
    accuracy, loss = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    steps = [r["step"] for r in rows]
    for domain in domains:
        accuracy.plot(steps, [r[domain] for r in rows], marker="o", markersize=3, label=domain)
    accuracy.axhline(0.9, color="gray", linestyle=":", linewidth=1)
    accuracy.set(xlabel="step", ylabel="exact match (held out)", ylim=(-0.02, 1.02), title=title)
    accuracy.legend(fontsize=7, loc="lower right")
    every_step = sorted(losses)
    loss.plot(every_step, [mean_loss_up_to(losses, step) for step in every_step], color="black", linewidth=1)
    loss.set(xlabel="step", ylabel=f"answer-token loss (mean of {LOSS_WINDOW} steps)", yscale="log")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def train(manifest: Path, nproc: int, work_dir: Path) -> float:
    """Run `moeops train` on the manifest; returns the wall seconds (launch to exit)."""
    command = [sys.executable, "-m", "moeops.cli", "train", "--job", str(manifest), "--nproc", str(nproc),
               "--work-dir", str(work_dir), "--no-carbon", "--metrics", str(work_dir / "metrics.jsonl")]  # fmt: skip
    started = time.monotonic()
    subprocess.run(command, check=True)
    return time.monotonic() - started


def read_losses(metrics: Path) -> dict[int, float]:
    """Rank 0's loss per step (the global answer-token mean: every rank logs the same value)."""
    return {r["step"]: r["loss"] for r in map(json.loads, metrics.read_text().splitlines())}


def score_checkpoints(
    run_dir: Path, losses: dict[int, float], count: int
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """`run_dir` is what `moeops train --job` made: the resolved config.json and checkpoints/step-N."""
    config = TrainingRuntimeConfig.model_validate_json((run_dir / "config.json").read_text())
    corpus = build_corpus(config)
    assert isinstance(corpus, SyntheticCorpus), "exact match needs a synthetic:// corpus"
    rows = []
    found = {int(m.group(1)): p for p in (run_dir / "checkpoints").iterdir() if (m := CHECKPOINT_DIR.match(p.name))}
    for step, path in sorted(found.items()):
        accuracy = evaluate(config, corpus, path, torch.device("cpu"), count)
        rows.append({"step": step, "loss": mean_loss_up_to(losses, step), **accuracy})
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    return rows, corpus.domains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, default=REPO / "examples" / "moe-debug-trainingjob.yaml")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--every", type=int, default=250, help="steps between scored checkpoints")
    parser.add_argument("--steps", type=int, default=None, help="override training.steps (smoke runs)")
    parser.add_argument("--eval-per-domain", type=int, default=50)
    parser.add_argument("--work-dir", type=Path, default=REPO / ".tmp" / "example-accuracy")
    parser.add_argument("--png", type=Path, default=None, help="draw the curve to this file")
    parser.add_argument("--score-only", action="store_true", help="score the checkpoints of an earlier run")
    args = parser.parse_args()

    run_dir = args.work_dir / "job"
    if not args.score_only:
        if run_dir.exists():
            sys.exit(f"{run_dir} exists: a rerun would resume from its checkpoints; remove it or --score-only")
        args.work_dir.mkdir(parents=True, exist_ok=True)
        manifest = args.work_dir / "job.yaml"
        manifest.write_text(
            yaml.safe_dump(curve_manifest(yaml.safe_load(args.job.read_text()), args.every, args.steps))
        )
        load_before = os.getloadavg()
        wall = train(manifest, args.nproc, args.work_dir)
        print(f"\ntraining wall {wall:.0f} s with {args.nproc} ranks; 1-min load average before {load_before[0]:.1f},"
              f" after {os.getloadavg()[0]:.1f}")  # fmt: skip
    torch.set_num_threads(1)
    losses = read_losses(args.work_dir / "metrics.rank0.jsonl")
    rows, domains = score_checkpoints(run_dir, losses, args.eval_per_domain)
    print(f"\nexact match on {args.eval_per_domain} held-out prompts per domain\n")
    print(markdown_table(rows, domains))
    if args.png is not None:
        plot(rows, losses, domains, args.png, f"{args.job.name}, {args.nproc} ranks")
        print(f"\ncurve: {args.png}")


if __name__ == "__main__":
    main()
