"""MoE against two dense baselines trained on the same tokens of the synthetic corpus: per-domain exact-match
accuracy on held-out examples and inference latency, CPU, fp32.

Baselines, trained and measured in the same process with the same seed, batches, steps and optimizer:
  dense-total   a dense SwiGLU as wide as all experts together (same total parameters as the MoE);
  dense-active  a dense SwiGLU as wide as top_k experts (same parameters active per token as the MoE).
The seed claims a MoE gives -37% inference latency at equal total parameters and +2.1 accuracy points; the
script prints the measured figures next to those claims, whatever they are.

    .venv/bin/python benchmarks/moe_vs_dense.py            # 2 layers, d=128, 8 experts top-2, 600 steps × 32 × 64
    .venv/bin/python benchmarks/moe_vs_dense.py --quick    # smoke run (seconds)

Training uses the trainer's loss (CE over answer tokens + aux and z losses with the API's default weights),
AdamW (0.9, 0.95) with no decay on 1-D parameters, warmup + cosine, global-norm clip 1.0 and the
auxiliary-loss-free bias update. Latency: the models alternate within each repeat (these machines drift
20-50% run to run); figures are medians; eval mode, no_grad.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.trainingjob import TrainingSpec
from moeops.data.synthetic import DOMAINS, IGNORE_INDEX, CharTokenizer, SyntheticCorpus, exact_match, greedy_generate
from moeops.model import MoE, Transformer
from moeops.model.transformer import FFNKind
from moeops.trainer.schedule import lr_at

KINDS: tuple[FFNKind, ...] = ("moe", "dense-total", "dense-active")
BASELINES = {"dense-total": "same total params", "dense-active": "same active params"}
SEED_LATENCY_CHANGE, SEED_ACCURACY_POINTS = -0.37, 2.1
DEFAULTS = TrainingSpec.model_fields
ADAM_BETAS = (0.9, 0.95)  # the trainer's (moeops.trainer.loop)


def default(name: str) -> float:
    value = DEFAULTS[name].default
    assert isinstance(value, float)
    return value


def active_params(model: Transformer) -> int:
    """Parameters used per token: everything except the routed experts that a token does not visit."""
    total = model.num_params()
    for module in model.modules():
        if isinstance(module, MoE):
            per_expert = sum(p.numel() for p in module.experts.parameters()) // module.router.experts
            total -= per_expert * (module.router.experts - module.top_k)
    return total


@dataclass
class Trained:
    model: Transformer
    train_s: float
    final_loss: float
    """Mean answer-token cross-entropy over the last 10% of steps."""
    max_load: float | None
    """MoE only: the busiest expert's share over the mean, last step, worst layer (1.0 = perfect balance)."""


def train(kind: FFNKind, arch: Architecture, batches: list[tuple[Tensor, Tensor]], args: argparse.Namespace) -> Trained:
    torch.manual_seed(args.seed)
    model = Transformer(arch, ffn=kind)
    model.train()
    moe_layers = [m for m in model.modules() if isinstance(m, MoE)]
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": default("weight_decay")},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=ADAM_BETAS)
    aux_coef, z_coef, bias_rate = default("aux_loss_coef"), default("z_loss_coef"), default("bias_update_rate")
    losses: list[float] = []
    max_load = None
    started = time.perf_counter()
    for step, (inputs_BS, targets_BS) in enumerate(batches):
        out = model(inputs_BS)
        answers = (targets_BS != IGNORE_INDEX).sum().clamp(min=1)
        ce = F.cross_entropy(out.logits_BSV.flatten(0, 1), targets_BS.flatten(), reduction="sum") / answers
        (ce + aux_coef * out.aux_loss + z_coef * out.z_loss).backward()
        nn.utils.clip_grad_norm_(params, default("grad_clip"))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, peak=args.lr, warmup=args.warmup, total=len(batches))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if out.tokens_per_expert_LE is not None:
            for layer, counts_E in zip(moe_layers, out.tokens_per_expert_LE, strict=True):
                layer.router.update_bias(counts_E, bias_rate)
            load_LE = out.tokens_per_expert_LE.float()
            max_load = float((load_LE.max(dim=1).values / load_LE.mean(dim=1)).max())
        losses.append(float(ce.detach()))
        if (step + 1) % max(1, len(batches) // 10) == 0:
            print(f"  {kind:12s} step {step + 1:5d}/{len(batches)}  loss {losses[-1]:.3f}", file=sys.stderr)
    tail = losses[-max(1, len(losses) // 10) :]
    return Trained(model, time.perf_counter() - started, statistics.fmean(tail), max_load)


def evaluate(model: Transformer, corpus: SyntheticCorpus, count: int) -> dict[str, float]:
    model.eval()
    context = model.arch.seq_len
    generate = lambda ids, n: greedy_generate(model, ids, n, context=context)  # noqa: E731
    # 24 new tokens: the longest answer ("hana works as a nurse") is 21 characters + EOS, over exact_match's
    # default of 16, which would score most template examples wrong whatever the model generates.
    return exact_match(generate, corpus, count, max_new_tokens=24)


def decode_fixed(model: Transformer, prompt_1S: Tensor, n: int) -> Tensor:
    """n greedy tokens with no EOS stop (every model does the same work); no KV cache, like greedy_generate."""
    tokens_1S = prompt_1S
    for _ in range(n):
        window = tokens_1S[:, -model.arch.seq_len :]
        tokens_1S = torch.cat([tokens_1S, model(window).logits_BSV[:, -1:].argmax(-1)], dim=1)
    return tokens_1S


@torch.no_grad()
def latency(
    models: dict[str, Transformer], prefill_BS: Tensor, prompt_1S: Tensor, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Median seconds per run of: a forward of the prefill batch; greedy decoding of args.gen_tokens tokens."""
    cases: dict[str, Callable[[Transformer], object]] = {
        "prefill": lambda m: m(prefill_BS),
        "decode": lambda m: decode_fixed(m, prompt_1S, args.gen_tokens),
    }
    for model in models.values():
        model.eval()
        for fn in cases.values():  # warm-up
            fn(model)
    times: dict[str, dict[str, list[float]]] = {case: {kind: [] for kind in models} for case in cases}
    for _ in range(args.repeats):
        for case, fn in cases.items():
            for kind, model in models.items():
                started = time.perf_counter()
                fn(model)
                times[case][kind].append(time.perf_counter() - started)
    return {case: {kind: statistics.median(ts) for kind, ts in by_kind.items()} for case, by_kind in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--ffn-hidden", type=int, default=128, help="per expert")
    parser.add_argument("--eval-per-domain", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15, help="latency repeats (median)")
    parser.add_argument("--prefill-batch", type=int, default=16)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (see docs/benchmarks.md)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a tiny model, a few steps")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch, args.layers, args.d_model, args.ffn_hidden, args.warmup = 6, 4, 1, 32, 32, 1
        args.eval_per_domain, args.repeats, args.prefill_batch, args.gen_tokens = 2, 3, 2, 4
    torch.set_num_threads(args.threads)

    tokenizer = CharTokenizer()
    arch = Architecture(layers=args.layers, d_model=args.d_model, heads=args.heads, experts=args.experts,
                        top_k=args.top_k, ffn_hidden=args.ffn_hidden, vocab_size=tokenizer.vocab_size,
                        seq_len=args.seq_len)  # fmt: skip
    corpus = SyntheticCorpus(DOMAINS, seed=args.seed, seq_len=args.seq_len, tokenizer=tokenizer)
    batches = [corpus.batch(step, args.batch) for step in range(args.steps)]  # the same tokens for every model
    answer_tokens = sum(int((t != IGNORE_INDEX).sum()) for _, t in batches)

    results: dict[str, dict[str, Any]] = {}
    models: dict[str, Transformer] = {}
    for kind in KINDS:
        trained = train(kind, arch, batches, args)
        models[kind] = trained.model
        acc = evaluate(trained.model, corpus, args.eval_per_domain)
        mean = statistics.fmean(acc.values())
        results[kind] = {
            "params_total": trained.model.num_params(),
            "params_active": active_params(trained.model),
            "train_s": round(trained.train_s, 1),
            "final_loss": round(trained.final_loss, 3),
            "max_expert_load": None if trained.max_load is None else round(trained.max_load, 2),
            "accuracy": {d: round(a, 3) for d, a in acc.items()},
            "accuracy_mean": round(mean, 4),
            # Binomial standard error over all eval examples: sampling noise of the eval set only (a second
            # training seed moves the figure too, by an amount this run does not measure).
            "accuracy_se": round(math.sqrt(mean * (1 - mean) / (args.eval_per_domain * len(acc))), 4),
        }
        print(f"  {kind:12s} trained in {trained.train_s:.0f} s, mean exact match {mean:.3f}", file=sys.stderr)

    prefill_BS = corpus.batch(args.steps + 1000, args.prefill_batch)[0]
    prompt = corpus.eval_examples("copy", 1)[0].prompt
    prompt_1S = torch.tensor([[tokenizer.BOS, *tokenizer.encode(prompt), tokenizer.SEP]])
    medians = latency(models, prefill_BS, prompt_1S, args)
    for name, row in results.items():
        prefill_s, decode_s = medians["prefill"][name], medians["decode"][name]
        row["prefill_ms"] = round(prefill_s * 1e3, 2)
        row["prefill_tokens_per_s"] = round(prefill_BS.numel() / prefill_s)
        row["decode_ms_per_token"] = round(decode_s * 1e3 / args.gen_tokens, 2)
        row["decode_tokens_per_s"] = round(args.gen_tokens / decode_s, 1)

    short = {d: d[:5] for d in DOMAINS}
    header = ["model", "total", "active", "loss"] + [short[d] for d in DOMAINS] + ["mean±se", "prefill", "decode"]
    print(f"\nsame tokens for every model: {args.steps} steps × {args.batch} × {args.seq_len} = "
          f"{args.steps * args.batch * args.seq_len:,} tokens ({answer_tokens:,} answer tokens); "
          f"torch threads: {torch.get_num_threads()}, fp32; exact match on {args.eval_per_domain} held-out per domain; "
          f"prefill = forward of {args.prefill_batch}×{args.seq_len} tokens, decode = ms/token over "
          f"{args.gen_tokens} greedy tokens (batch 1, no KV cache)")  # fmt: skip
    print(" | ".join(header))
    for name, r in results.items():
        acc = r["accuracy"]
        cells = [name, f"{r['params_total']:,}", f"{r['params_active']:,}", f"{r['final_loss']:.3f}"]
        cells += [f"{acc[d]:.2f}" for d in DOMAINS]
        cells += [f"{r['accuracy_mean']:.3f}±{r['accuracy_se']:.3f}",
                  f"{r['prefill_ms']:.1f} ms ({r['prefill_tokens_per_s']:,} tok/s)",
                  f"{r['decode_ms_per_token']:.2f} ms ({r['decode_tokens_per_s']:.0f} tok/s)"]  # fmt: skip
        print(" | ".join(cells))

    ratios: dict[str, dict[str, float]] = {}
    print()
    moe = results["moe"]
    for base, what in BASELINES.items():
        b = results[base]
        ratio = {
            "prefill_latency_ratio": round(medians["prefill"]["moe"] / medians["prefill"][base], 2),
            "decode_latency_ratio": round(medians["decode"]["moe"] / medians["decode"][base], 2),
            "accuracy_delta_points": round(100 * (moe["accuracy_mean"] - b["accuracy_mean"]), 1),
        }
        ratios[f"moe_vs_{base}"] = ratio
        prefill, decode, delta = ratio.values()
        print(f"MoE vs {base} ({what}): latency ratio prefill {prefill:.2f}, decode {decode:.2f}; "
              f"accuracy delta {delta:+.1f} points")  # fmt: skip
    print(f"seed's claim (MoE vs dense at equal total params): latency ratio {1 + SEED_LATENCY_CHANGE:.2f} "
          f"({SEED_LATENCY_CHANGE:+.0%}), accuracy delta {SEED_ACCURACY_POINTS:+.1f} points")  # fmt: skip
    print(json.dumps({"threads": torch.get_num_threads(), "args": vars(args), "models": results,
                      "ratios": ratios}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
