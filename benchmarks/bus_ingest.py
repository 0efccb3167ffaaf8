"""Bus ingest: messages per second the rebalancer ingests on one core from a real nats-server, and its lag.

This process runs the consumers pinned to one core; nats-server and the producer (a separate process, so that it
does not share the ingest core) run on the other cores. The producer publishes realistic WorkerMetrics as the
trainer's sink does since 2026-11-29 (`encode_metrics`' compact record, no Nats-Msg-Id header; `--json` and
`--msg-id` send what it sent before): `--ranks` ranks per step, `tokens_per_expert` for `--layers` × `--experts`
from rank 0 only, different every step, into the METRICS stream. Besides messages/s it prints how busy the
ingest core was (this process's CPU time / wall time) and messages per CPU-second: other processes share these
cores, so that is what one core of our own would ingest.

1. Saturation: a backlog of `--ranks` × `--steps` messages is stored first; each consumer then drains it with
   its own durable consumer; ingested messages/s from its first message to its last. Variants, alternating over
   `--repeats`: `service` (RebalancerService: push consumer, fast decode, aggregation, a plan per batch, one ack
   per batch); `pull-fetch` (the previous service: pull `fetch(256)`, the reference decoder, an ack per
   message); `floor` (the same push consumer with no decoding or aggregation: nats-py and the server alone).
2. Sustained: for each of `--rates`, the producer offers that many messages/s for `--seconds`; the service
   ingests them live, with flow control (the default) and without; the lag is the time it folds a record in
   − measured_at_unix_s (one machine, one clock), p50 and p99. A consumer that falls more than 1000 steps per
   rank behind loses the oldest to the stream's retention: `received` < `sent` says so. The curve (offered
   against taken msgs/s, lag p99 at each) ends the output as a markdown table, with the highest offered rate
   taken whole with a lag p99 ≤ `--p99-ms` (the sustained rate): `--rates 5000 10000 20000 30000 40000 50000
   --flow-control on --repeats 0` measures the curve alone.

    .venv/bin/python benchmarks/bus_ingest.py            # 64 ranks × 900 steps, 3 repeats; 50k/s and 5k/s, 10 s
    .venv/bin/python benchmarks/bus_ingest.py --quick    # 200 steps, 1 repeat, 3 s sustained
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path

import nats

from moeops.bus.connection import ConnectionOptions, connect
from moeops.bus.messages import COUNTS_RANK, BadMessage, WorkerMetrics, decode_reference, encode, encode_metrics
from moeops.bus.streams import ensure_metrics_stream, ensure_plans_bucket
from moeops.bus.subjects import METRICS_STREAM, MSG_ID_HEADER, metrics_msg_id, metrics_subject
from moeops.devcluster.nats_server import NatsServer
from moeops.rebalancer.consumer import ConsumerLimits, MetricsConsumer
from moeops.rebalancer.edge import RebalancerService
from moeops.rebalancer.jobs import JobKey, JobSettings
from moeops.rebalancer.policy import Hysteresis

NAMESPACE = "bench"


# --- the producer (its own process) ---------------------------------------------------------------------------


# Where a record holds its step and its timestamp (metrics_wire's layout): the producer patches a per-rank template.
STEP_AT, MEASURED_AT = struct.calcsize("<2sHII"), struct.calcsize("<2sHIIQQQdddddd")


def rank_message(job: str, ranks: int, rank: int, step: int, counts: list[list[int]], now: float) -> WorkerMetrics:
    return WorkerMetrics(
        namespace=NAMESPACE, job=job, world_size=ranks, rank=rank, step=step, loss=2.0, aux_loss=0.01,
        tokens=8192, step_seconds=0.5, compute_seconds=0.4 if rank else 0.6, comm_seconds=0.1, lr=3e-4,
        tokens_per_expert=counts, max_memory_bytes=60 << 30, measured_at_unix_s=now,
    )  # fmt: skip


def expert_counts(step: int, layers: int, experts: int) -> list[list[int]]:
    """One step's global counts (the same on every rank); they change every step."""
    return [
        [1000 + (37 * expert + 11 * layer + 7 * step) % 500 for expert in range(experts)] for layer in range(layers)
    ]


class Messages:
    """The bytes a rank's sink publishes for a step: the compact record (or, with `json`, the JSON of before
    2026-11-29), with the all-reduced counts from COUNTS_RANK only, [] from the others, as the trainer sends them."""

    def __init__(self, job: str, args: argparse.Namespace) -> None:
        self.job, self.args = job, args
        self.subjects = [metrics_subject(NAMESPACE, job, rank) for rank in range(args.ranks)]
        self.templates = [encode_metrics(rank_message(job, args.ranks, rank, 0, [], 0.0)) for rank in range(args.ranks)]
        self.counts: tuple[int, list[list[int]]] = (-1, [])

    def body(self, rank: int, step: int, now: float) -> bytes:
        if self.counts[0] != step:
            self.counts = (step, expert_counts(step, self.args.layers, self.args.experts))
        if self.args.json or rank == COUNTS_RANK:
            counts = self.counts[1] if rank == COUNTS_RANK else []
            message = rank_message(self.job, self.args.ranks, rank, step, counts, now)
            return encode(message) if self.args.json else encode_metrics(message)
        record = bytearray(self.templates[rank])
        struct.pack_into("<Q", record, STEP_AT, step)
        struct.pack_into("<d", record, MEASURED_AT, now)
        return bytes(record)


async def produce(args: argparse.Namespace) -> None:
    """Publishes ranks × steps messages at `rate`/s (0: as fast as it can); prints what it sent."""
    client = await nats.connect(args.produce, pending_size=64 * 1024 * 1024)
    messages = Messages(args.job, args)
    total, sent = args.ranks * args.steps, 0
    started = time.perf_counter()
    while sent < total:
        due = total if args.rate <= 0 else min(total, int((time.perf_counter() - started) * args.rate) + 1)
        if sent >= due:  # ahead of the rate: sleep a tick rather than spin on the core nats-server needs
            await asyncio.sleep(0.002)
            continue
        for index in range(sent, min(due, sent + 2000)):
            step, rank = divmod(index, args.ranks)
            subject = messages.subjects[rank]
            headers = {MSG_ID_HEADER: metrics_msg_id(NAMESPACE, args.job, rank, step)} if args.msg_id else None
            await client.publish(subject, messages.body(rank, step, time.time()), headers=headers)
            sent += 1
        await asyncio.sleep(0)
    await client.flush(timeout=30)
    seconds = time.perf_counter() - started
    await client.close()
    print(json.dumps({"sent": sent, "seconds": seconds, "rate": sent / seconds}))


def start_producer(
    url: str, job: str, steps: int, rate: float, args: argparse.Namespace, cpus: set[int]
) -> subprocess.Popen[str]:
    command = [
        sys.executable, __file__, "--produce", url, "--job", job, "--steps", str(steps), "--rate", str(rate),
        "--ranks", str(args.ranks), "--layers", str(args.layers), "--experts", str(args.experts),
        *(["--msg-id"] if args.msg_id else []),
        *(["--json"] if args.json else []),
    ]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus)
    )


def producer_result(process: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise SystemExit(f"the producer failed ({process.returncode})")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


# --- the consumers (this process, one core) -------------------------------------------------------------------


def settings(job: str) -> JobSettings:
    return JobSettings(NAMESPACE, job, global_batch=1024, hysteresis=Hysteresis(interval_steps=50))


class MeasuredService(RebalancerService):
    """The service, recording each record's lag as it is folded in (one clock reading per run of records)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.lags = array("d")
        super().__init__(*args, observe=self._observe, **kwargs)  # type: ignore[arg-type]

    def _observe(self, measured_at: Sequence[float]) -> None:
        now = time.time()
        self.lags.extend(now - at for at in measured_at)


class PullFetchBaseline(MeasuredService):
    """The previous service's loop (commit 0715d85): pull fetch(256), the reference decoder, an ack per message."""

    async def run(self, stop: asyncio.Event) -> None:
        client = await connect(self.options)
        js = client.jetstream()
        kv = await ensure_plans_bucket(js)
        subscription = await js.pull_subscribe(self.filter, durable=self.durable, stream=METRICS_STREAM)
        self.ready.set()
        while not stop.is_set():
            try:
                messages = await subscription.fetch(256, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either when none come
                continue
            touched: set[JobKey] = set()
            for message in messages:
                self.counters.received += 1
                try:
                    decoded = decode_reference(message.subject, message.data)
                except BadMessage:
                    continue
                assert isinstance(decoded, WorkerMetrics)
                self._observe((decoded.measured_at_unix_s,))
                key = self.ingest.accept(self.jobs[(decoded.namespace, decoded.job)], decoded)
                if key is not None:
                    touched.add(key)
            for key in sorted(touched):
                await self._plan(kv, self.jobs[key])
            for message in messages:
                await message.ack()
        await client.flush(timeout=5)
        await client.close()


class Floor:
    """The same push consumer, counting messages: no decoding, no aggregation, no planning."""

    def __init__(self, options: ConnectionOptions, job: str, durable: str) -> None:
        self.options, self.job, self.durable = options, job, durable
        self.received = 0
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        client = await connect(self.options)
        consumer = MetricsConsumer(
            client.jetstream(), METRICS_STREAM, f"moeops.metrics.{NAMESPACE}.{self.job}.*", self.durable,
            ConsumerLimits(),
        )  # fmt: skip
        await consumer.start(client.new_inbox())
        self.ready.set()
        while not stop.is_set():
            batch = await consumer.next_batch(2048, stop, 0.5)
            self.received += len(batch)
            if batch:
                await consumer.ack(batch[-1])
        await consumer.close()
        await client.close()


def received(consumer: RebalancerService | Floor) -> int:
    return consumer.received if isinstance(consumer, Floor) else consumer.counters.received


async def drain(
    consumer: RebalancerService | Floor, expected: int, idle_s: float = 10.0, on_ready: Callable[[], None] | None = None
) -> tuple[float, int, float]:
    """Runs the consumer until it received `expected` messages (or none came for `idle_s` after the first, or
    for a minute before it): the seconds, messages and this process's CPU seconds from its first message to its
    last, polled every 5 ms."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(consumer.ready.wait(), timeout=30)
    if on_ready is not None:
        on_ready()
    first: tuple[float, int, float] | None = None
    last = (time.perf_counter(), 0, 0.0)
    while received(consumer) < expected and time.perf_counter() - last[0] < (idle_s if first else 60.0):
        await asyncio.sleep(0.005)
        count, now = received(consumer), time.perf_counter()
        if count > last[1]:
            last = (now, count, time.process_time())
            first = first or last
    stop.set()
    await asyncio.wait_for(task, timeout=30)
    if first is None:
        return 0.0, 0, 0.0
    return last[0] - first[0], last[1] - first[1], last[2] - first[2]


def options(url: str) -> ConnectionOptions:
    return ConnectionOptions(servers=(url,), name="bus-ingest-bench")


async def saturation(url: str, args: argparse.Namespace, cpus: set[int]) -> dict[str, list[float]]:
    job = "saturation"
    producer = start_producer(url, job, args.steps, 0, args, cpus)
    print("backlog:", producer_result(producer), file=sys.stderr)
    expected = args.ranks * args.steps
    variants: dict[str, Callable[[str], RebalancerService | Floor]] = {
        "service": lambda durable: MeasuredService(options(url), [settings(job)], durable=durable),
        "pull-fetch": lambda durable: PullFetchBaseline(options(url), [settings(job)], durable=durable),
        "floor": lambda durable: Floor(options(url), job, durable),
    }
    variants = {name: make for name, make in variants.items() if name in args.variants}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    busy: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, make in variants.items():
            seconds, count, cpu = await drain(make(f"bench-{name}-{repeat}"), expected)
            rates[name].append(count / seconds if seconds > 0 else 0.0)
            busy[name].append(cpu / seconds if seconds > 0 else 0.0)
            print(
                f"  {name:10s} repeat {repeat}: {count} msgs in {seconds:.2f} s = {rates[name][-1]:,.0f}/s, "
                f"core {busy[name][-1]:.0%} busy",
                file=sys.stderr,
            )
    return {**rates, **{f"{name}_core_busy": values for name, values in busy.items()}}


async def sustained(
    url: str, args: argparse.Namespace, cpus: set[int], rate: float, flow_control: bool
) -> dict[str, float]:
    """The service ingesting live while the producer offers `rate` messages/s for `--seconds`."""
    job = f"live-{int(rate)}-{'fc' if flow_control else 'no-fc'}"
    steps = max(1, int(rate * args.seconds) // args.ranks)
    limits = ConsumerLimits(flow_control=flow_control)
    service = MeasuredService(options(url), [settings(job)], durable=f"bench-{job}", limits=limits)
    producer: list[subprocess.Popen[str]] = []
    seconds, count, cpu = await drain(
        service,
        args.ranks * steps,
        idle_s=3.0,
        on_ready=lambda: producer.append(start_producer(url, job, steps, rate, args, cpus)),
    )
    offered = producer_result(producer[0])
    lags = sorted(service.lags)

    def quantile(q: float) -> float:
        return lags[min(len(lags) - 1, int(q * len(lags)))] * 1000 if lags else float("nan")

    return {
        "offered_per_s": offered["rate"],
        "sent": offered["sent"],
        "received": service.counters.received,
        "ingested_per_s": count / seconds if seconds > 0 else 0.0,
        "core_busy": cpu / seconds if seconds > 0 else 0.0,
        "msgs_per_cpu_s": count / cpu if cpu > 0 else 0.0,
        "lag_p50_ms": quantile(0.50),
        "lag_p99_ms": quantile(0.99),
        "lag_max_ms": quantile(1.0),
    }


FLOW_CONTROL = {"both": (True, False), "on": (True,), "off": (False,)}


def curve(live: dict[str, dict[str, float]], p99_ms: float) -> str:
    """The sustained runs as a markdown table (offered, taken, lag p50/p99), and the sustained rate: the highest
    offered rate whose messages were all taken, at the offered rate (within 5%), with a lag p99 ≤ `p99_ms`."""
    rows = ["| asked | offered msgs/s | taken msgs/s | taken / offered | lag p50 ms | lag p99 ms | received / sent"
            " | ingest core busy | msgs per CPU-s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    held = [0.0]
    for name, run in sorted(live.items(), key=lambda item: (item[0].endswith("control"), float(item[0].split("/")[0]))):
        offered, taken = run["offered_per_s"], run["ingested_per_s"]
        ratio = taken / offered if offered > 0 else 0.0
        rows.append(f"| {name} | {offered:,.0f} | {taken:,.0f} | {ratio:.2f} | {run['lag_p50_ms']:.0f} |"
                    f" {run['lag_p99_ms']:.0f} | {run['received']:,.0f} / {run['sent']:,.0f} | {run['core_busy']:.2f} |"
                    f" {run['msgs_per_cpu_s']:,.0f} |")  # fmt: skip
        if run["received"] >= run["sent"] and ratio >= 0.95 and run["lag_p99_ms"] <= p99_ms:
            held.append(offered)
    rows.append(f"sustained: {max(held):,.0f} msgs/s offered with every message taken and lag p99 <= {p99_ms:.0f} ms")
    return "\n".join(rows)


def message_bytes(args: argparse.Namespace) -> int:
    return len(Messages("saturation", args).body(COUNTS_RANK + 1, 450, 0.5))


async def bench(args: argparse.Namespace) -> dict[str, object]:
    cpus = os.sched_getaffinity(0)
    ingest_cpu = args.ingest_cpu if args.ingest_cpu in cpus else min(cpus)
    others = (cpus - {ingest_cpu}) or cpus
    os.sched_setaffinity(0, others)  # nats-server inherits these
    with tempfile.TemporaryDirectory() as work, NatsServer(Path(work) / "nats") as server:
        os.sched_setaffinity(0, {ingest_cpu})
        client = await nats.connect(server.url)
        await ensure_metrics_stream(client.jetstream())
        await client.close()
        rates = await saturation(server.url, args, others) if args.repeats > 0 else {}
        live = {
            f"{rate:.0f}/s{'' if fc else ' no flow control'}": await sustained(server.url, args, others, rate, fc)
            for rate in args.rates
            for fc in FLOW_CONTROL[args.flow_control]
        }
    result: dict[str, object] = {"message_bytes": message_bytes(args), "ingest_cpu": ingest_cpu}
    if rates:
        median = {name: statistics.median(values) for name, values in rates.items() if not name.endswith("_busy")}
        busy = {
            name.removesuffix("_core_busy"): statistics.median(v) for name, v in rates.items() if name.endswith("_busy")
        }
        result |= {
            "saturation_msgs_per_s": {name: round(value) for name, value in median.items()},
            "saturation_runs": {name: [round(v) for v in values] for name, values in rates.items() if name in median},
            "saturation_core_busy": {name: round(value, 2) for name, value in busy.items()},
            # What the core would ingest if nothing else ran on it (others' processes share these two cores).
            "saturation_msgs_per_cpu_s": {name: round(median[name] / busy[name]) for name in median if busy[name] > 0},
        }
        for baseline in ("pull-fetch", "floor"):
            if {"service", baseline} <= median.keys():
                result[f"ratio_service_vs_{baseline.replace('-', '_')}"] = round(
                    median["service"] / median[baseline], 2
                )
    result["sustained"] = {name: {k: round(v, 1) for k, v in run.items()} for name, run in live.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 steps, 1 repeat, 3 s sustained")
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--steps", type=int, default=900, help="backlog steps per rank (the stream keeps 1000)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="saturation runs of each variant (0: none)")
    parser.add_argument("--rates", type=float, nargs="*", default=[50_000, 5_000], help="offered msgs/s, sustained")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flow-control", choices=sorted(FLOW_CONTROL), default="both", help="sustained variants")
    parser.add_argument("--p99-ms", type=float, default=100.0, help="the lag p99 a sustained rate must keep")
    parser.add_argument(
        "--variants", nargs="+", default=["service", "pull-fetch", "floor"], help="saturation consumers to run"
    )
    parser.add_argument("--json", action="store_true", help="publish JSON metrics (the format before 2026-11-29)")
    parser.add_argument(
        "--msg-id", action="store_true", help="publish with a Nats-Msg-Id header (as the sink did before 2026-11-29)"
    )
    parser.add_argument("--ingest-cpu", type=int, default=0)
    parser.add_argument("--produce", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--job", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.produce:
        asyncio.run(produce(args))
        return
    if args.quick:
        args.steps, args.repeats, args.seconds = 200, min(args.repeats, 1), 3.0
    result = asyncio.run(bench(args))
    print(json.dumps(result, indent=2))
    print(curve(result["sustained"], args.p99_ms))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
