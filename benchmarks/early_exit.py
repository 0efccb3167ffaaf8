"""Adaptive early exit (CALM-style, over a LayerSkip-trained MoE) against the full model, CPU, fp32.

Trains a small MoE with the early-exit loss on the six synthetic domains through the trainer itself (or loads
a trainer checkpoint), calibrates a threshold on held-out prompts (token agreement with the full model
≥ 1 - δ), then decodes other held-out prompts, greedy with a KV cache, under each configuration:

  full, no cache    greedy_generate recomputing the prefix each token (what `moeops train --evaluate` does);
  full              the KV-cache decoder through every layer: the baseline the ratios are against;
  exit@t            the same decoder exiting at the first layer ≥ --min-layer whose confidence ≥ t.

and reports per-token latency (p50/p99: the time between two tokens of the decoder; the first includes the
prompt's prefill), tokens/s, exact-match accuracy per domain and the mean exit layer. Configurations alternate
per prompt (these machines drift 20-50% run to run). The seed claims -31% latency at the same success rate;
the figures printed are whatever this run measures.

    .venv/bin/python benchmarks/early_exit.py                 # 4 layers, d=64, 1500 steps × 16 (~6 minutes)
    .venv/bin/python benchmarks/early_exit.py --steps 50 --eval-per-domain 5     # smoke run
    .venv/bin/python benchmarks/early_exit.py --checkpoint CKPT/step-00001000 --config CKPT/../config.json
    .venv/bin/python benchmarks/early_exit.py --save /tmp/ee          # keep the trained model, then measure it
    .venv/bin/python benchmarks/early_exit.py --model /tmp/ee --ab-propagation   # again, without training

The 2026-12-07 curve (the default setting, min layer 1 and 2, K/V propagation A/B) is in docs/benchmarks.md.

Measured 2026-11-29, defaults (2 shared, busy CPU cores; 30 test prompts per domain, one seed; EM = mean
exact match over the six domains; ratios: p50 per-token latency against `full`):

  exit loss weight   full EM   calibrated t (δ=0.02)   at t: p50 ×, ΔEM, mean exit layer   at t=0.95
  0   (off)          0.522     1.0 (no exit passes)    -                                   0.99×, -0.189, 3.48
  0.2 (default)      0.611     0.85                    0.67×, -0.011, 2.37 of 4            0.75×, +0.000, 2.62
  1.0                0.394     0.8                     0.68×, -0.017, 2.27 of 4            0.78×, -0.006, 2.45

So without the exit loss the early layers' predictions are useless through the shared head (LayerSkip's point);
with it at 0.2 the -31% claim holds here at the calibrated threshold within one example in 90 of the full
model's accuracy, and -25% at equal accuracy; weight 1.0 cost the final layer 13-22 EM points in this 4-layer
model. The KV cache alone gives ~1.15× over recomputing the prefix (prompts of 10-30 tokens: overhead-bound).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from early_exit_calibration import calibrate_model  # benchmarks/, on sys.path as the script's folder
from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.api.v1alpha1.early_exit_loss import EarlyExitLossSpec
from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import CheckpointConfig, ParallelPlan, TrainingRuntimeConfig, WorldSpec
from moeops.api.v1alpha1.trainingjob import DataSpec, RebalanceSpec, TrainingSpec
from moeops.checkpoint.weights import load_model_weights
from moeops.data.synthetic import (
    CharTokenizer,
    Example,
    SyntheticCorpus,
    greedy_generate,
    parse_source,
    prompt_ids,
)
from moeops.model import Transformer
from moeops.model.kv_cache import KVCache
from moeops.serving.decoding import decode
from moeops.serving.decoding.decode import generate
from moeops.serving.decoding.early_exit import NEVER_EXIT, ExitPolicy
from moeops.trainer.distributed import World
from moeops.trainer.loop import Trainer
from moeops.trainer.metrics import NullSink

PER_LAYER = ", K/V per layer"
"""Suffix of the A/B rows whose skipped layers' K/V are written layer by layer (--ab-propagation)."""
SEED_LATENCY_CHANGE = -0.31
BASELINE = "full"
CPU = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def config_from(args: argparse.Namespace, directory: Path) -> TrainingRuntimeConfig:
    arch = Architecture(layers=args.layers, d_model=args.d_model, heads=args.heads, experts=args.experts,
                        top_k=args.top_k, ffn_hidden=args.ffn_hidden, vocab_size=64, seq_len=args.seq_len)  # fmt: skip
    exits = EarlyExitLossSpec(loss_weight=args.exit_weight, min_layer=args.min_layer)
    training = TrainingSpec(steps=args.steps, global_batch_size=args.batch, learning_rate=args.lr,
                            warmup_steps=min(args.warmup, args.steps - 1), precision="fp32", seed=args.seed,
                            early_exit=exits)  # fmt: skip
    return TrainingRuntimeConfig(
        job_name="early-exit-benchmark",
        namespace="local",
        architecture=arch,
        training=training,
        data=DataSpec(source="synthetic://all"),
        plan=ParallelPlan(data=1, tensor=1, pipeline=1, expert=1, activation_checkpointing=False),
        world=WorldSpec(nnodes=1, nproc_per_node=1, rendezvous_port=29500),
        checkpoint=CheckpointConfig(interval_steps=10**8, keep=1, directory=str(directory)),
        rebalance=RebalanceSpec(enabled=False),
        carbon=CarbonSpec(),
    )


def train(config: TrainingRuntimeConfig, directory: Path) -> tuple[Transformer, dict[str, float]]:
    """The trainer's own step (exit loss included) in this process; the whole model back as a Transformer."""
    trainer = Trainer(config, CPU, NullSink(), directory)
    started, losses = time.perf_counter(), []
    total = config.training.steps
    for step in range(1, total + 1):
        losses.append(trainer.train_step().loss)
        if step % max(1, total // 10) == 0:
            print(f"  step {step}/{total}: loss {statistics.fmean(losses[-20:]):.3f}", flush=True)
    model = Transformer(config.architecture)
    model.load_state_dict(trainer.model.state_dict())  # the stage keeps the full model's parameter names
    tail = losses[-max(1, len(losses) // 10) :]
    return model, {"train_s": time.perf_counter() - started, "final_loss": statistics.fmean(tail)}


@dataclass
class Measured:
    """One configuration over the test prompts."""

    token_s: list[float] = field(default_factory=list)
    right: dict[str, int] = field(default_factory=dict)
    exit_layers: list[int] = field(default_factory=list)

    def summary(self, examples: int, domains: tuple[str, ...]) -> dict[str, float]:
        times = sorted(self.token_s)
        per_domain = {d: self.right.get(d, 0) / examples for d in domains}
        out = {
            "p50_ms": 1e3 * statistics.median(times),
            "p99_ms": 1e3 * times[min(len(times) - 1, round(0.99 * (len(times) - 1)))],
            "tokens_per_s": len(times) / sum(times),
            "exact_match": statistics.fmean(per_domain.values()),
            "mean_exit_layer": statistics.fmean(self.exit_layers) if self.exit_layers else float("nan"),
        }
        return out | {f"em_{d}": v for d, v in per_domain.items()}


def timed(tokens: Iterator[tuple[int, int]]) -> tuple[list[int], list[float], list[int]]:
    """Drain (token, exit layer) pairs, timing each one's wait."""
    ids: list[int] = []
    waits: list[float] = []
    layers: list[int] = []
    while True:
        started = time.perf_counter()
        try:
            token, layer = next(tokens)
        except StopIteration:
            return ids, waits, layers
        waits.append(time.perf_counter() - started)
        ids.append(token)
        layers.append(layer)


Runner = Callable[[list[int], int], Iterator[tuple[int, int]]]


class _PerLayerKV:
    """The layer-by-layer propagation that moeops.model.early_exit_kv replaced, for the A/B rows."""

    def __init__(self, model: Transformer) -> None:
        self.model = model

    def fill(self, h_BSD: torch.Tensor, first: int, cache: KVCache, start: int) -> None:
        self.model.propagate_kv(h_BSD, range(first, self.model.arch.layers), cache, start)


@contextmanager
def per_layer_propagation(model: Transformer) -> Iterator[None]:
    """decode_step writing the skipped layers' K/V layer by layer (Transformer.propagate_kv) meanwhile."""
    fused = getattr(decode, "skipped_layers_kv")  # noqa: B009 (a module global the decoder looks up per token)
    setattr(decode, "skipped_layers_kv", lambda _model: _PerLayerKV(model))  # noqa: B010
    try:
        yield
    finally:
        setattr(decode, "skipped_layers_kv", fused)  # noqa: B010


def runners(model: Transformer, policies: dict[str, ExitPolicy]) -> dict[str, Runner]:
    depth = model.arch.layers

    def no_cache(prompt: list[int], budget: int) -> Iterator[tuple[int, int]]:
        # One token at a time from the non-cached reference, so each wait is one token's recomputation.
        tokens = torch.tensor([prompt])
        for _ in range(budget):
            token = int(greedy_generate(model, tokens, 1)[0])
            yield token, depth
            if token == CharTokenizer.EOS:
                return
            tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)

    def with_policy(policy: ExitPolicy, per_layer: bool) -> Runner:
        def run(prompt: list[int], budget: int) -> Iterator[tuple[int, int]]:
            with per_layer_propagation(model) if per_layer else nullcontext():
                yield from ((d.token, d.exit_layer) for d in generate(model, prompt, budget, policy))

        return run

    return {"full, no cache": no_cache} | {
        name: with_policy(p, name.endswith(PER_LAYER)) for name, p in policies.items()
    }


def answer(tokenizer: CharTokenizer, ids: list[int]) -> str:
    if CharTokenizer.EOS in ids:
        ids = ids[: ids.index(CharTokenizer.EOS)]
    return tokenizer.decode([i for i in ids if i < tokenizer.vocab_size])


def measure(
    model: Transformer, corpus: SyntheticCorpus, tests: list[Example], configs: dict[str, Runner]
) -> dict[str, Measured]:
    tok = corpus.tokenizer
    results = {name: Measured() for name in configs}
    with torch.no_grad():
        for example in tests:
            prompt = prompt_ids(tok, example.prompt)[0].tolist()
            budget = len(tok.encode(example.answer)) + 1  # as exact_match: the answer and its EOS
            for name, run in configs.items():  # alternating: drift hits every configuration alike
                ids, waits, layers = timed(run(prompt, budget))
                m = results[name]
                m.token_s += waits
                m.exit_layers += layers
                m.right[example.domain] = m.right.get(example.domain, 0) + (answer(tok, ids) == example.answer)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--ffn-hidden", type=int, default=128)
    parser.add_argument("--exit-weight", type=float, default=0.2, help="training.earlyExit.lossWeight")
    parser.add_argument("--min-layer", type=int, default=1)
    parser.add_argument("--rule", choices=["softmax-max", "top2-margin"], default="softmax-max")
    parser.add_argument("--thresholds", default="0.5,0.7,0.8,0.9,0.95")
    parser.add_argument("--delta", type=float, default=0.02, help="calibration: agreement >= 1 - delta")
    parser.add_argument("--calibrate-per-domain", type=int, default=10)
    parser.add_argument("--eval-per-domain", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--checkpoint", type=Path, help="a trainer checkpoint directory (step-NNNNNNNN)")
    parser.add_argument("--config", type=Path, help="with --checkpoint: its run's config.json")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--ab-propagation", action="store_true",
                        help="also the calibrated threshold, skipped layers' K/V written layer by layer")  # fmt: skip
    parser.add_argument("--save", type=Path, help="keep the trained model here (config.json, model.pt)")
    parser.add_argument("--model", type=Path, help="a model kept by --save: measure it without training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    trained: dict[str, float]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is not None:
            config = TrainingRuntimeConfig.model_validate_json((args.model / "config.json").read_text())
            model = Transformer(config.architecture)
            model.load_state_dict(torch.load(args.model / "model.pt", weights_only=True))
            trained = {}
        elif args.checkpoint is not None:
            if args.config is None:
                parser.error("--checkpoint needs --config (the architecture and data of its run)")
            config = TrainingRuntimeConfig.model_validate_json(args.config.read_text())
            model = Transformer(config.architecture)
            load_model_weights(args.checkpoint, model)
            trained = {}
        else:
            config = config_from(args, Path(tmp))
            print(f"training {args.steps} steps (exit loss weight {args.exit_weight}) ...", flush=True)
            model, trained = train(config, Path(tmp))
            if args.save is not None:
                args.save.mkdir(parents=True, exist_ok=True)
                (args.save / "config.json").write_text(config.model_dump_json())
                torch.save(model.state_dict(), args.save / "model.pt")
    model.eval()
    arch = config.architecture
    # The trainer's corpus (same seed), so that the prompts here are held out of what it trained on.
    corpus = SyntheticCorpus(parse_source(config.data.source), config.training.seed, arch.seq_len)
    calib: list[Example] = []
    tests: list[Example] = []
    for domain in corpus.domains:
        examples = corpus.eval_examples(domain, args.eval_per_domain + args.calibrate_per_domain)
        tests += examples[: args.eval_per_domain]
        calib += examples[args.eval_per_domain :]  # disjoint from the test prompts

    base = ExitPolicy(enabled=True, rule=args.rule, min_layer=args.min_layer)
    tok = corpus.tokenizer
    started = time.perf_counter()
    calibration = calibrate_model(model, [prompt_ids(tok, e.prompt)[0] for e in calib],
                                  max(len(tok.encode(e.answer)) + 1 for e in calib), base, args.delta)  # fmt: skip
    print(f"calibrated threshold {calibration.threshold} (agreement {calibration.agreement:.3f} >= {1 - args.delta})"
          f" in {time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip

    thresholds = sorted({float(t) for t in args.thresholds.split(",")} | {calibration.threshold} - {1.0})
    policies: dict[str, ExitPolicy] = {BASELINE: NEVER_EXIT}
    policies |= {f"exit@{t:g}" + (" (calibrated)" if t == calibration.threshold else ""):
                 base.override(threshold=t) for t in thresholds}  # fmt: skip
    if args.ab_propagation:
        policies[f"exit@{calibration.threshold:g}{PER_LAYER}"] = base.override(threshold=calibration.threshold)
    results = measure(model, corpus, tests, runners(model, policies))
    rows = {name: m.summary(args.eval_per_domain, corpus.domains) for name, m in results.items()}
    report(rows, corpus.domains, arch, trained, args)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "trained": trained, "calibrated": calibration.threshold,
                                         "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))  # fmt: skip


def report(
    rows: dict[str, dict[str, float]],
    domains: tuple[str, ...],
    arch: Architecture,
    trained: dict[str, float],
    args: argparse.Namespace,
) -> None:
    base = rows[BASELINE]
    if trained:
        print(f"trained {args.steps} steps in {trained['train_s']:.0f} s, final loss {trained['final_loss']:.3f}")
    print(f"model: {arch.layers} layers, d={arch.d_model}, {arch.experts} experts top-{arch.top_k}; rule {args.rule},"
          f" min layer {args.min_layer}; {args.eval_per_domain} test prompts per domain")  # fmt: skip
    header = f"{'config':<22} {'p50 ms':>7} {'p99 ms':>7} {'tok/s':>7} {'p50 ×':>6} {'EM':>6} {'ΔEM':>6} {'exit L':>6}"
    print(header + "  " + " ".join(f"{d[:5]:>5}" for d in domains))
    for name, r in rows.items():
        print(f"{name:<22} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['tokens_per_s']:7.0f}"
              f" {r['p50_ms'] / base['p50_ms']:6.2f} {r['exact_match']:6.3f}"
              f" {r['exact_match'] - base['exact_match']:+6.3f}"
              f" {r['mean_exit_layer']:6.2f}  " + " ".join(f"{r['em_' + d]:5.2f}" for d in domains))  # fmt: skip
    print(f"seed claim: {SEED_LATENCY_CHANGE:+.0%} latency at the same success; ratios above are against '{BASELINE}'")


if __name__ == "__main__":
    main()
