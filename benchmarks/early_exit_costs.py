"""What one decoding step of early exit costs, piece by piece, on a model kept by `early_exit.py --save`.

The per-token latency ratio of exit@t against the full model is about

    (embed + e·block + c·exit head + propagate(L - e)) / (embed + L·block + head)

for a token leaving after layer e having looked at c exit heads. This times each piece on one token at a cache
position typical of the benchmark's prompts (median of --repeats calls, one thread): a block, an exit head with
its confidence check, the skipped layers' K/V written layer by layer (Transformer.propagate_kv) and in one
matmul (moeops.model.early_exit_kv), and prints the ratio's floor per exit layer: what the exit distribution
must reach for a given latency ratio.

    .venv/bin/python benchmarks/early_exit.py --save /tmp/ee          # train and keep a model once
    .venv/bin/python benchmarks/early_exit_costs.py --model /tmp/ee
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from moeops.api.v1alpha1.runtime import TrainingRuntimeConfig
from moeops.model import Transformer
from moeops.model.early_exit_kv import skipped_layers_kv
from moeops.serving.decoding.early_exit import confidence


def median_s(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a folder written by early_exit.py --save")
    parser.add_argument("--position", type=int, default=24, help="cache position of the timed token")
    parser.add_argument("--repeats", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = TrainingRuntimeConfig.model_validate_json((args.model / "config.json").read_text())
    model = Transformer(config.architecture)
    model.load_state_dict(torch.load(args.model / "model.pt", weights_only=True))
    model.eval()
    layers = model.arch.layers
    cache = model.new_kv_cache(batch=1, capacity=args.position + 1)
    with torch.no_grad():
        model.forward_cached(torch.randint(4, 56, (1, args.position)), cache)
        token = torch.tensor([[5]])
        hidden = model.embedding(token)
        at = cache.length

        def full() -> None:
            x = model.embedding(token)
            for layer in range(layers):
                x = model.forward_layer_cached(layer, x, cache, at)
            model.exit_logits(x)[0, -1].argmax()

        costs = {
            "embed": median_s(lambda: model.embedding(token), args.repeats),
            "block": statistics.fmean(
                median_s(partial(model.forward_layer_cached, layer, hidden, cache, at), args.repeats)
                for layer in range(layers)
            ),
            "exit head + check": median_s(
                lambda: float(confidence(model.exit_logits(hidden)[0, -1], "softmax-max")), args.repeats
            ),
            "full step": median_s(full, args.repeats),
        }
        folded = skipped_layers_kv(model)
        per_layer = {e: median_s(partial(model.propagate_kv, hidden, range(e, layers), cache, at), args.repeats)
                     for e in range(1, layers)}  # fmt: skip
        fused = {e: median_s(partial(folded.fill, hidden, e, cache, at), args.repeats) for e in range(1, layers)}
    print(f"model {layers} layers d={model.arch.d_model}; one token at position {args.position}; µs, median:")
    for name, seconds in costs.items():
        print(f"  {name:<20} {seconds * 1e6:8.1f}")
    full_s = costs["full step"]
    print(f"{'exit after':>10} {'propagate: per layer':>21} {'one matmul':>11} {'ratio floor (heads 1..e)':>26}")
    for e in range(1, layers):
        floor = (costs["embed"] + e * costs["block"] + e * costs["exit head + check"] + fused[e]) / full_s
        print(f"{e:>10} {per_layer[e] * 1e6:>21.1f} {fused[e] * 1e6:>11.1f} {floor:>26.2f}")


if __name__ == "__main__":
    main()
