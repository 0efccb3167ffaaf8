"""Downstream: the same small MoE model trained for the same steps on the unfiltered and on the filtered corpus of
`datafilter_density.py` (issue 21), scored on held-out text of the reference's domain.

The corpus and the filter are the density benchmark's (originals of Zipfian pseudo-words with injected exact and
near copies, garbage and machine-made text; level 1 + level 3 over 2 task processes). Words are the tokens: the
3,000-word pseudo-vocabulary, one token for any other word (garbage, the spam template's words) and one between
documents. Each run trains moeops's own Transformer (MoE FFNs) from the same initial weights, with the same seed,
steps, batch and learning rate; only the documents differ. Batches are windows of the documents concatenated in a
seeded random order, drawn at random offsets.

Held-out: new documents of the reference's distribution (never seen by the filter or either model). Printed per
run: held-out loss (nats/token), perplexity and next-word accuracy (top-1 exact match), and the ratios filtered /
unfiltered. The originals are word sequences without grammar (each word drawn from the Zipf law), so the best
reachable loss is the unigram entropy, also printed: the gap to it is what the training data can change.

    .venv/bin/python benchmarks/datafilter_downstream.py --documents 2000 --steps 400
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from datafilter_density import make_corpus, prose, threshold, vocabulary  # the sibling benchmark's corpus
from moeops.api.v1alpha1.presets import Architecture
from moeops.datafilter.local import filter_corpus
from moeops.datafilter.normalise import normalise
from moeops.model.transformer import Transformer

UNKNOWN, BOUNDARY = 0, 1


def encode(texts: list[str], ids: dict[str, int]) -> list[int]:
    tokens: list[int] = []
    for text in texts:
        tokens += [ids.get(word, UNKNOWN) for word in normalise(text).split()]
        tokens.append(BOUNDARY)
    return tokens


def windows(tokens: list[int], length: int) -> torch.Tensor:
    """Non-overlapping windows of length+1 tokens (input and shifted target)."""
    count = (len(tokens) - 1) // length
    return torch.tensor(tokens[: count * length + 1]).unfold(0, length + 1, length)


def train(model: Transformer, data: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> float:
    """AdamW with a linear warmup (10%) and cosine decay; the last step's loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    generator = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for _ in range(steps):
        rows = data[torch.randint(len(data), (batch,), generator=generator)]
        out = model(rows[:, :-1])
        loss = F.cross_entropy(out.logits_BSV.flatten(0, 1), rows[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        (loss + 0.01 * out.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: Transformer, data: torch.Tensor) -> tuple[float, float]:
    """(mean loss in nats/token, top-1 next-word accuracy) over every held-out window."""
    model.eval()
    losses, hits, count = 0.0, 0, 0
    for rows in data.split(32):
        logits = model(rows[:, :-1]).logits_BSV.flatten(0, 1)
        targets = rows[:, 1:].flatten()
        losses += float(F.cross_entropy(logits, targets, reduction="sum"))
        hits += int((logits.argmax(-1) == targets).sum())
        count += targets.numel()
    model.train()
    return losses / count, hits / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=2000, help="original documents")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--held-out", type=int, default=300, help="held-out documents of the reference's domain")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    vocab = vocabulary(random.Random(args.seed), 3000)  # make_corpus's first draw from the same seed: its words
    ids = {word: i + 2 for i, word in enumerate(vocab)}
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    rng = random.Random(args.seed + 1_000_003)
    held_out = windows(encode([prose(rng, vocab, weights) for _ in range(args.held_out)], ids), args.seq_len)
    total = sum(weights)
    entropy = -sum(w / total * math.log(w / total) for w in weights)

    with tempfile.TemporaryDirectory() as tmp:
        corpus, reference, _ = make_corpus(Path(tmp), args.documents, seed=args.seed)
        records = [json.loads(line) for line in corpus.read_text().splitlines()]
        report = filter_corpus(corpus.parent, Path(tmp) / "out", 2, reference=reference,
                               max_perplexity=threshold(reference), adversarial_drop=0.05)  # fmt: skip
        kept = [json.loads(line) for shard in report["shards"] for line in Path(shard).read_text().splitlines()]

    arch = Architecture(layers=2, d_model=64, heads=4, experts=4, top_k=2, ffn_hidden=128,
                        vocab_size=len(vocab) + 2, seq_len=args.seq_len)  # fmt: skip
    initial = Transformer(arch).state_dict()
    print(f"model {sum(p.numel() for p in Transformer(arch).parameters()):,} parameters; {args.steps} steps x"
          f" {args.batch} x {args.seq_len} tokens; held-out {held_out.numel():,} tokens;"
          f" unigram entropy (best reachable loss) {entropy:.4f}")  # fmt: skip
    results = {}
    for name, docs in (("unfiltered", records), ("filtered", kept)):
        order = random.Random(args.seed).sample(docs, len(docs))
        tokens = encode([d["text"] for d in order], ids)
        data = windows(tokens, args.seq_len)
        unknown = sum(t == UNKNOWN for t in tokens) / len(tokens)
        model = Transformer(arch)
        model.load_state_dict(initial)
        started = time.perf_counter()
        last = train(model, data, args.steps, args.batch, args.lr, args.seed)
        seconds = time.perf_counter() - started
        loss, accuracy = evaluate(model, held_out)
        results[name] = (loss, accuracy)
        print(f"{name:10s} documents {len(docs):5d} tokens {len(tokens):7,} (unknown {unknown:.1%}); train loss"
              f" {last:.4f}; held-out loss {loss:.4f} (perplexity {math.exp(loss):.1f}, gap to entropy"
              f" {loss - entropy:.4f}), next-word accuracy {accuracy:.4f}; {seconds:.0f} s")  # fmt: skip
    (u_loss, u_acc), (f_loss, f_acc) = results["unfiltered"], results["filtered"]
    print(
        f"filtered / unfiltered: held-out loss x{f_loss / u_loss:.4f}, perplexity x{math.exp(f_loss - u_loss):.4f},"
        f" gap to entropy x{(f_loss - entropy) / (u_loss - entropy):.3f}, next-word accuracy x{f_acc / u_acc:.4f}"
    )


if __name__ == "__main__":
    main()
