"""Bus ingest through a core NATS subscription: what the rebalancer's own per-message work costs when nats-py's
JetStream push delivery (headers, ack subjects, flow control) is out of the way. A prototype measurement for the
next ingest design (live metrics from a plain subscription, the stream only replayed on a restart), not a path the
service takes today.

Every JetStream publish is also delivered to plain subscribers of its subject, so the producer of
`bus_ingest.py` (its own process, on the other core, with nats-server) publishes into the METRICS stream as
the trainer's sink does while this process, pinned to one core, runs:
- `core`: a plain subscription whose callback folds each message in as the service does (`_ingest`: `decode`
  with its fast path, then the job's `LoadAggregator`), planning every 0.2 s;
- `core floor`: the same subscription counting messages (nats-py alone);
- `service`: today's `RebalancerService` (durable push consumer) draining the same number of stored messages:
  the named baseline, in the same process.
The producer cannot offer 50k messages/s on a core it shares with nats-server, so a live subscription takes what
it gets: the figure that matters is messages per CPU-second of the ingest process (what one core would take).

    .venv/bin/python benchmarks/bus_ingest_core.py            # 64 ranks × 400 steps, 3 repeats
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.msg import Msg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bus_ingest import MeasuredService, drain, options, producer_result, settings, start_producer
from moeops.bus.connection import connect
from moeops.bus.streams import ensure_metrics_stream
from moeops.devcluster.nats_server import NatsServer

NAMESPACE = "bench"
PLAN_EVERY_S = 0.2


async def live(url: str, args: argparse.Namespace, cpus: set[int], job: str, fold: bool) -> tuple[int, float, float]:
    """Messages received, wall seconds and CPU seconds from the first message to the last (clocks read every
    256 messages: the counts are those of the readings)."""
    service = MeasuredService(options(url), [settings(job)], durable=f"unused-{job}")
    client = await connect(options(url))
    plans_kv = None
    count, first, last = 0, (0.0, 0.0), (0.0, 0.0)
    touched: set[tuple[str, str]] = set()

    async def on_message(message: Msg) -> None:
        nonlocal count, first, last
        if fold:
            key = service.ingest.one(message.subject, message.data)
            if key is not None:
                touched.add(key)
        count += 1
        if count == 1 or count % 256 == 0:  # the process's CPU clock is a system call: not on every message
            last = (time.perf_counter(), time.process_time())
            first = first if count > 1 else last

    subscription = await client.subscribe(
        f"moeops.metrics.{NAMESPACE}.{job}.*", cb=on_message, pending_msgs_limit=1_000_000
    )
    await client.flush()
    producer = start_producer(url, job, args.steps, 0, args, cpus)
    expected, planned, idle_since = args.ranks * args.steps, time.perf_counter(), time.perf_counter()
    seen = 0
    while count < expected and time.perf_counter() - idle_since < 5.0:
        await asyncio.sleep(PLAN_EVERY_S)
        if count > seen:
            seen, idle_since = count, time.perf_counter()
        if fold and touched and time.perf_counter() - planned >= PLAN_EVERY_S:
            if plans_kv is None:
                from moeops.bus.streams import ensure_plans_bucket

                plans_kv = await ensure_plans_bucket(client.jetstream())
            for key in sorted(touched):
                await service._plan(plans_kv, service.jobs[key])
            touched.clear()
            planned = time.perf_counter()
    print("producer:", producer_result(producer), file=sys.stderr)
    await subscription.unsubscribe()
    await client.close()
    measured = count - count % 256 - 1  # messages between the first reading and the last
    return measured, last[0] - first[0], last[1] - first[1]


async def bench(args: argparse.Namespace) -> dict[str, object]:
    cpus = os.sched_getaffinity(0)
    ingest_cpu = min(cpus)
    others = (cpus - {ingest_cpu}) or cpus
    os.sched_setaffinity(0, others)  # nats-server inherits these
    runs: dict[str, list[tuple[int, float, float]]] = {"core": [], "core floor": [], "service": []}
    with tempfile.TemporaryDirectory() as work, NatsServer(Path(work) / "nats") as server:
        os.sched_setaffinity(0, {ingest_cpu})
        client = await nats.connect(server.url)
        await ensure_metrics_stream(client.jetstream())
        await client.close()
        for repeat in range(args.repeats):
            for name in runs:
                job = f"{name.replace(' ', '-')}-{repeat}"
                if name == "service":  # the baseline drains what `core` stored, with a durable consumer of its own
                    stored = f"core-{repeat}"
                    service = MeasuredService(options(server.url), [settings(stored)], durable=f"svc-{repeat}")
                    seconds, count, cpu = await drain(service, args.ranks * args.steps)
                    runs[name].append((count, seconds, cpu))
                else:
                    runs[name].append(await live(server.url, args, others, job, fold=name == "core"))
                count, seconds, cpu = runs[name][-1]
                print(
                    f"  {name:10s} repeat {repeat}: {count} msgs in {seconds:.2f} s, CPU {cpu:.2f} s "
                    f"= {count / cpu if cpu else 0:,.0f} msgs per CPU-s",
                    file=sys.stderr,
                )
    per_cpu = {name: [count / cpu for count, _, cpu in values if cpu > 0] for name, values in runs.items()}
    rate = {name: [count / s for count, s, _ in values if s > 0] for name, values in runs.items()}
    median = {name: statistics.median(values) for name, values in per_cpu.items() if values}
    return {
        "msgs_per_cpu_s": {name: round(value) for name, value in median.items()},
        "msgs_per_cpu_s_runs": {name: [round(v) for v in values] for name, values in per_cpu.items()},
        "received_per_s_runs": {name: [round(v) for v in values] for name, values in rate.items()},
        "ratio_core_vs_service": round(median["core"] / median["service"], 2),
        "ratio_core_vs_core_floor": round(median["core"] / median["core floor"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args)), indent=2))


if __name__ == "__main__":
    main()
