"""The model server under concurrent load on loopback: throughput and latency, batched against unbatched.

Starts the real server (`python -m moeops.serving`, uvicorn, one process per configuration) on a checkpoint —
given, or a random-init MoE saved with the trainer's checkpoint.save — and drives it from this process with a
closed-loop load generator: N users on one asyncio httpx client, each sending its next /v1/completions as soon as
the last one answered, for --duration seconds per concurrency level (after a warm-up). Reported per configuration
and concurrency: requests/s, generated tokens/s, p50/p99 end-to-end latency, p50 time to first token (requests are
streamed as server-sent events; --no-stream: whole JSON answers, no TTFT), and the mean number of sequences per
engine round (from /metrics). The baseline is the same server with maxBatchSize 1 (no batching), run in the same
invocation; configurations alternate per concurrency level:

  batched           continuous batching, and a round's full-depth sequences in one pass (serving/decoding/batched.py);
  scheduling-only   continuous batching, each sequence its own decode_step (what early-exiting sequences get);
  unbatched         maxBatchSize 1: one request at a time, first come first served.

Measured (2 shared CPU cores, busy machine: other jobs ran meanwhile; random-init 4-layer d=128 8-expert MoE,
16-token prompts, 32 tokens each; load generator on the same 2 cores), tokens/s and p99 vs unbatched:

                    users  JSON answers              SSE streams               TTFT p50 (SSE)
  batched              16  384 tok/s x3.27, p99 x0.35  328 tok/s x2.55, p99 x0.62  180 ms
  scheduling-only      16  144 tok/s x1.22, p99 x0.77   91 tok/s x0.71, p99 x1.72  609 ms
  unbatched            16  117 tok/s                   129 tok/s                  3393 ms
  batched               4  236 tok/s x1.77, p99 x0.92  145 tok/s x1.19, p99 x0.64  108 ms (unbatched 648)
  all three             1  163-167 tok/s, p50 ~180 ms  122-133 tok/s               ~30 ms

The engine alone (no HTTP) advances 16 rows in 13 ms per round (1,235 tok/s) against 102 ms one by one: over HTTP
on two cores the event loop and the load generator take most of the rest.

    .venv/bin/python benchmarks/serving_load.py                          # random-init 4-layer MoE, 10 s per level
    .venv/bin/python benchmarks/serving_load.py --duration 3 --levels 1 4   # smoke run
    .venv/bin/python benchmarks/serving_load.py --checkpoint .tmp/train/moe-debug-trainingjob/checkpoints
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

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

    def __init__(self, checkpoint_dir: Path, max_batch: int, max_latency_ms: float, fused: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "moeops.serving", "--checkpoint", str(checkpoint_dir), "--host", "127.0.0.1",
               "--port", str(self.port), "--model-name", "bench", "--max-batch-size", str(max_batch),
               "--max-latency-ms", str(max_latency_ms), "--log-level", "warning",
               "--batched-matmuls" if fused else "--no-batched-matmuls"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
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
        raise RuntimeError("the server did not become ready in 120 s")

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
    mean_round: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_s)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000 if data else float("nan")


async def _one(client: httpx.AsyncClient, body: dict[str, object]) -> tuple[float, float, int]:
    """(latency, time to first token, completion tokens) of one completion (TTFT NaN when not streamed)."""
    start = time.perf_counter()
    if not body["stream"]:
        r = await client.post("/v1/completions", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text}")
        return time.perf_counter() - start, float("nan"), int(r.json()["usage"]["completion_tokens"])
    first, tail = float("nan"), b""
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode()}")
        async for data in r.aiter_raw():  # raw bytes: the generator must cost less than the server it measures
            if first != first:  # NaN: the first chunk
                first = time.perf_counter() - start
            tail = (tail + data)[-4096:]
    events = [e for e in tail.decode(errors="replace").split("\n\n") if e.startswith("data: {")]
    tokens = int(json.loads(events[-1][6:])["usage"]["completion_tokens"])
    return time.perf_counter() - start, first, tokens


async def drive(
    url: str, concurrency: int, duration_s: float, prompts: list[list[int]], args: argparse.Namespace
) -> Result:
    stop_at = time.perf_counter() + duration_s
    latencies: list[float] = []
    ttft: list[float] = []
    tokens = 0

    async def user(u: int, client: httpx.AsyncClient) -> None:
        nonlocal tokens
        i = u
        while time.perf_counter() < stop_at:
            body = {"model": "bench", "prompt": prompts[i % len(prompts)], "max_tokens": args.max_tokens,
                    "stream": args.stream}  # fmt: skip
            latency, first, n = await _one(client, body)
            latencies.append(latency)
            if first == first:
                ttft.append(first)
            tokens += n
            i += concurrency

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(user(u, client) for u in range(concurrency)))
        seconds = time.perf_counter() - started
    return Result("", concurrency, len(latencies), tokens, seconds, latencies, ttft, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a random-init 4-layer MoE")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent users")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level and configuration")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="whole JSON answers (no TTFT)")
    parser.add_argument("--max-latency-ms", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or random_checkpoint(Path(tmp), ARCH)
        rng = random.Random(0)
        # Synthetic-corpus ids (BOS ... SEP) of printable characters: any model trained on it takes them.
        prompts = [[1, *(rng.randrange(4, 56) for _ in range(args.prompt_len - 2)), 3] for _ in range(64)]
        window = f"≤{args.max_batch}, {args.max_latency_ms:g} ms"
        configs = {f"batched({window})": (args.max_batch, args.max_latency_ms, True),
                   f"scheduling-only({window})": (args.max_batch, args.max_latency_ms, False),
                   BASELINE: (1, 0.0, True)}  # fmt: skip
        servers = {name: Server(ckpt, b, ms, fused) for name, (b, ms, fused) in configs.items()}
        machine = f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
        print(f"checkpoint {ckpt}; {machine}; prompts {args.prompt_len} tokens, max_tokens {args.max_tokens},"
              f" {args.duration:g} s per level, {'streamed (SSE)' if args.stream else 'JSON'} answers")  # fmt: skip
        results: list[Result] = []
        try:
            for level in args.levels:
                for name, server in servers.items():
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
    head = f"{'configuration':<32}{'users':>6}{'req/s':>8}{'tok/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'TTFT p50':>10}"
    print(head + f"{'seq/round':>10}{'vs ' + BASELINE:>22}")
    base = {r.concurrency: r for r in results if r.config == BASELINE}
    for r in results:
        b = base.get(r.concurrency)
        versus = "" if b is None or r.config == BASELINE else (
            f"tok/s x{r.tps / b.tps:.2f}, p99 x{r.pct(0.99) / b.pct(0.99):.2f}"
        )  # fmt: skip
        ttft = statistics.median(r.ttft_s) * 1000 if r.ttft_s else float("nan")
        print(f"{r.config:<32}{r.concurrency:>6}{r.rps:>8.1f}{r.tps:>8.0f}{r.pct(0.5):>9.0f}{r.pct(0.99):>9.0f}"
              f"{ttft:>10.0f}{r.mean_round:>10.2f}{versus:>22}")  # fmt: skip


if __name__ == "__main__":
    main()
