"""Plans and rank 0's acknowledgements through a real nats-server, for the tests that put a plan or wait for an
acknowledgement (test_plan_acks_nats.py, test_rebalance_live_experts.py, test_rebalancer_nats.py): a short
connection per call, so a blocking test can use them between its subprocesses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import nats
from nats.js import JetStreamContext
from polling import wait_until

from moeops.bus.messages import RebalancePlan
from moeops.bus.plan_ack_store import ensure_plan_acks_bucket, latest_ack
from moeops.bus.plan_acks import PlanAck
from moeops.bus.streams import ensure_metrics_stream, ensure_plans_bucket, put_plan


@asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    """JetStream with the metrics stream and the plans bucket the rebalancer and the trainer use."""
    client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=3)
    try:
        js = client.jetstream()
        await ensure_metrics_stream(js)
        await ensure_plans_bucket(js)
        yield js
    finally:
        await client.close()


async def create_streams(url: str) -> None:
    """The metrics stream and the plans bucket, before a trainer or a rebalancer (not the test) first uses them."""
    async with jetstream(url):
        pass


async def put_plan_at(url: str, plan: RebalancePlan) -> None:
    async with jetstream(url) as js:
        await put_plan(await ensure_plans_bucket(js), plan)


async def newest_ack(url: str, namespace: str, job: str) -> PlanAck | None:
    async with jetstream(url) as js:
        return await latest_ack(await ensure_plan_acks_bucket(js), namespace, job)


def wait_for_ack(
    url: str,
    namespace: str,
    job: str,
    accept: Callable[[PlanAck], bool],
    what: str,
    timeout_s: float = 20.0,
    alive: Callable[[], bool] = lambda: True,
) -> PlanAck:
    """Blocks until rank 0's newest acknowledgement is one `accept`s, and returns it; fails at once when `alive`
    (the trainer's process) no longer is."""
    found: list[PlanAck | None] = [None]

    def stored() -> bool:
        assert alive(), f"the trainer stopped before {what}"
        found[0] = asyncio.run(newest_ack(url, namespace, job))
        return found[0] is not None and accept(found[0])

    wait_until(stored, what, timeout_s=timeout_s)
    assert found[0] is not None
    return found[0]
