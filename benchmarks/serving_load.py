"""The model server under concurrent load on loopback: TTFT, inter-token latency, end-to-end latency and tokens/s
at 1 / 8 / 32 users, the server's defaults against the same server unbatched.

Starts the real server (`python -m moeops.serving`, uvicorn, one process per configuration) on a checkpoint —
given, or a random-init MoE saved with the trainer's checkpoint.save — and drives it from this process with a
closed-loop load generator: N users, each sending its next streamed /v1/completions (with
stream_options.include_usage) as soon as the last one answered, through the official `openai` client
(--client httpx: raw bytes, a lighter generator), for --duration seconds per level after a 2-s warm-up.
Configurations alternate per level (drift hits both alike):

  defaults          the server as `moeops serve` starts it: continuous batching, maxBatchSize 16 within 10 ms,
                    a round's full-depth sequences in one pass;
  scheduling-only   (--scheduling-only) continuous batching, each sequence its own decode_step;
  unbatched         maxBatchSize 1: one request at a time, first come first served (the named baseline).

Reported per configuration and level: requests/s, tokens/s, TTFT p50/p99, inter-token latency p50/p99 (gaps
between a stream's consecutive token chunks), end-to-end p50/p99, each request's own decoding speed (p50 and
its slowest 1%), and the mean sequences per engine round (/metrics). Figures: docs/benchmarks.md.

    .venv/bin/python benchmarks/serving_load.py                            # random-init 4-layer MoE, 10 s per level
    .venv/bin/python benchmarks/serving_load.py --duration 3 --levels 1 8   # smoke run
    .venv/bin/python benchmarks/serving_load.py --checkpoint .tmp/train/moe-debug-trainingjob/checkpoints
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from moeops.api.v1alpha1.inferenceservice import BatchingSpec
from moeops.api.v1alpha1.presets import Architecture
from moeops.model import Transformer
from moeops.trainer import checkpoint
from moeops.trainer.distributed import World

ARCH = Architecture(layers=4, d_model=128, heads=4, experts=8, top_k=2, ffn_hidden=256, vocab_size=64, seq_len=128)
BASELINE = "unbatched"


def random_checkpoint(directory: Path, arch: Architecture) -> Path:
    """<dir>/config.json (the architecture) and <dir>/checkpoints/step-00000001 of a random-init model."""
    (directory / "config.json").write_text(json.dumps({"architecture": arch.model_dump(by_alias=True)}))
    torch.manual_seed(0)
    model = Transformer(arch)
    world = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
        optimizer = torch.optim.AdamW(model.parameters())
        checkpoint.save(directory / "checkpoints", 1, model, optimizer, world, {"job": "bench"}, keep=1)
    return directory / "checkpoints"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m moeops.serving` in a subprocess, until closed."""

    def __init__(self, checkpoint_dir: Path, flags: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "moeops.serving", "--checkpoint", str(checkpoint_dir), "--host", "127.0.0.1",
               "--port", str(self.port), "--model-name", "bench", "--log-level", "warning", *flags]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError("the server did not become ready in 300 s")

    def counters(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.split()
                out[name] = float(value)
        return out

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Result:
    config: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    latencies_s: list[float]
    ttft_s: list[float]
    itl_s: list[float]
    """Inter-token latency: the gaps between a stream's consecutive tokens (after the first), all requests."""
    user_tps: list[float]
    """Each request's own decoding speed: its tokens after the first over the time they took."""
    mean_round: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds

    def pct(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000


def percentile(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


@dataclass
class Answer:
    latency_s: float
    ttft_s: float
    token_times_s: list[float]
    tokens: int


async def _one_openai(client: Any, body: dict[str, Any]) -> Answer:
    """One streamed completion through the official client (`openai.AsyncOpenAI`), timing each token's chunk."""
    start = time.perf_counter()
    times: list[float] = []
    tokens = 0
    stream = await client.completions.create(**body, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text is not None:
            times.append(time.perf_counter() - start)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return Answer(time.perf_counter() - start, times[0] if times else float("nan"), times, tokens)


async def _one_httpx(client: httpx.AsyncClient, body: dict[str, Any]) -> Answer:
    """The same over raw httpx bytes (cheaper for the load generator; a token's time is its chunk's arrival,
    and chunks that arrive together count as one)."""
    start, times, tail = time.perf_counter(), [], b""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode()}")
        async for data in r.aiter_raw():
            times.append(time.perf_counter() - start)
            tail = (tail + data)[-4096:]
    events = [e for e in tail.decode(errors="replace").split("\n\n") if e.startswith("data: {")]
    tokens = int(json.loads(events[-1][6:])["usage"]["completion_tokens"])
    return Answer(time.perf_counter() - start, times[0] if times else float("nan"), times[:-2], tokens)


async def drive(
    url: str, concurrency: int, duration_s: float, prompts: list[list[int]], args: argparse.Namespace
) -> Result:
    stop_at = time.perf_counter() + duration_s
    answers: list[Answer] = []

    async def user(u: int, send: Callable[[dict[str, Any]], Awaitable[Answer]]) -> None:
        i = u
        while time.perf_counter() < stop_at:
            body = {"model": "bench", "prompt": prompts[i % len(prompts)], "max_tokens": args.max_tokens}
            answers.append(await send(body))
            i += concurrency

    started = time.perf_counter()
    if args.client == "openai":
        import openai

        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120) as oc:
            await asyncio.gather(*(user(u, lambda b: _one_openai(oc, b)) for u in range(concurrency)))
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as hc:
            await asyncio.gather(*(user(u, lambda b: _one_httpx(hc, b)) for u in range(concurrency)))
    seconds = time.perf_counter() - started
    itl = [b - a for x in answers for a, b in zip(x.token_times_s, x.token_times_s[1:], strict=False)]
    user_tps = [
        (len(x.token_times_s) - 1) / (x.token_times_s[-1] - x.token_times_s[0])
        for x in answers
        if len(x.token_times_s) > 1 and x.token_times_s[-1] > x.token_times_s[0]
    ]
    return Result("", concurrency, len(answers), sum(x.tokens for x in answers), seconds,
                  [x.latency_s for x in answers], [x.ttft_s for x in answers if x.ttft_s == x.ttft_s], itl,
                  user_tps)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a random-init 4-layer MoE")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="concurrent users")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level and configuration")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--client", choices=["openai", "httpx"], default="openai",
                        help="the official client (default) or raw httpx bytes (a lighter load generator)")  # fmt: skip
    parser.add_argument("--scheduling-only", action="store_true",
                        help="also: continuous batching with each sequence its own pass")  # fmt: skip
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or random_checkpoint(Path(tmp), ARCH)
        rng = random.Random(0)
        # Synthetic-corpus ids (BOS ... SEP) of printable characters: any model trained on it takes them.
        prompts = [[1, *(rng.randrange(4, 56) for _ in range(args.prompt_len - 2)), 3] for _ in range(64)]
        defaults = BatchingSpec()
        configs: dict[str, list[str]] = {
            f"defaults (batch ≤{defaults.max_batch_size}, {defaults.max_latency_ms} ms)": []
        }
        if args.scheduling_only:
            configs["scheduling-only"] = ["--no-batched-matmuls"]
        configs[BASELINE] = ["--max-batch-size", "1", "--max-latency-ms", "0"]
        servers = {name: Server(ckpt, flags) for name, flags in configs.items()}
        machine = f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
        print(f"checkpoint {ckpt}; {machine}; prompts {args.prompt_len} tokens, max_tokens {args.max_tokens},"
              f" {args.duration:g} s per level, streamed through the {args.client} client")  # fmt: skip
        results: list[Result] = []
        try:
            for level in args.levels:
                for name, server in servers.items():  # alternating: drift hits every configuration alike
                    results.append(measure(server, name, level, args, prompts))
        finally:
            for server in servers.values():
                server.close()
    report(results)


def measure(server: Server, name: str, level: int, args: argparse.Namespace, prompts: list[list[int]]) -> Result:
    asyncio.run(drive(server.url, level, min(2.0, args.duration), prompts, args))  # warm-up
    before = server.counters()
    result = asyncio.run(drive(server.url, level, args.duration, prompts, args))
    after = server.counters()
    rounds = after["moeops_server_rounds_total"] - before["moeops_server_rounds_total"]
    made = after["moeops_server_tokens_generated_total"] - before["moeops_server_tokens_generated_total"]
    result.config, result.mean_round = name, made / rounds if rounds else 0.0
    return result


def report(results: list[Result]) -> None:
    head = (f"{'configuration':<30}{'users':>6}{'req/s':>7}{'tok/s':>7}{'TTFT p50/p99 ms':>17}{'ITL p50/p99 ms':>16}"
            f"{'e2e p50/p99 ms':>17}{'user tok/s p50/1%':>20}{'seq/round':>10}  vs {BASELINE}")  # fmt: skip
    print(head)
    base = {r.concurrency: r for r in results if r.config == BASELINE}
    for r in results:
        b = base.get(r.concurrency)
        versus = "" if b is None or r.config == BASELINE else (
            f"tok/s x{r.tps / b.tps:.2f}, TTFT p99 x{percentile(r.ttft_s, 0.99) / percentile(b.ttft_s, 0.99):.2f},"
            f" e2e p99 x{r.pct(0.99) / b.pct(0.99):.2f}"
        )  # fmt: skip
        ttft = f"{percentile(r.ttft_s, 0.5) * 1e3:.0f} / {percentile(r.ttft_s, 0.99) * 1e3:.0f}"
        itl = f"{percentile(r.itl_s, 0.5) * 1e3:.1f} / {percentile(r.itl_s, 0.99) * 1e3:.1f}"
        e2e = f"{r.pct(0.5):.0f} / {r.pct(0.99):.0f}"
        utps = f"{percentile(r.user_tps, 0.5):.0f} / {percentile(r.user_tps, 0.01):.0f}"
        print(f"{r.config:<30}{r.concurrency:>6}{r.rps:>7.1f}{r.tps:>7.0f}{ttft:>17}{itl:>16}{e2e:>17}{utps:>20}"
              f"{r.mean_round:>10.2f}  {versus}")  # fmt: skip


if __name__ == "__main__":
    main()
