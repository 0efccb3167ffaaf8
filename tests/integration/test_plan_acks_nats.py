"""Plan acknowledgements through a real nats-server: rank 0's plan follower acknowledges what it applied and what it
refused (with the trainer's reason), and the rebalancer plans from what runs, not from a refused plan."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
import torch
from plan_acks_bus import jetstream, newest_ack, put_plan_at, wait_for_ack
from polling import eventually, wait_until
from test_rebalancer_nats import BATCH, JOB, NAMESPACE, WORLD, make_service, publish_steps, running, stored_plan

from moeops.bus.buckets import ensure_reports_bucket, latest_report
from moeops.bus.connection import ConnectionOptions
from moeops.bus.messages import RebalancePlan
from moeops.bus.plan_ack_store import ensure_plan_acks_bucket, put_ack
from moeops.bus.plan_acks import STARTED, AckOutcome, PlanAck, RunningParts
from moeops.bus.plan_shares import sequences_from_fractions
from moeops.bus.plan_watch import PlanWatcher
from moeops.devcluster.nats_server import NatsServer
from moeops.trainer.distributed import World
from moeops.trainer.plans import TrainerShape
from moeops.trainer.rebalance import PlanFollower

pytestmark = pytest.mark.nats

SHAPE = TrainerShape(global_batch=BATCH, data=WORLD, micro_batches=1, pipeline=1, expert=1, layers=4, experts=4,
                     stage_layers=((0, 4),))  # fmt: skip


def _plan(epoch: int, shares: list[float], **fields: object) -> RebalancePlan:
    values: dict[str, object] = {
        "namespace": NAMESPACE, "job": JOB, "epoch": epoch, "apply_at_step": 3 + epoch, "data_shares": shares,
        "stage_layers": [(0, 4)], "predicted_gain": 0.2, "created_at_unix_s": time.time(),
    }  # fmt: skip
    return RebalancePlan.model_validate(values | fields)


def _stored_ack(url: str, epoch: int) -> PlanAck:
    return wait_for_ack(
        url, NAMESPACE, JOB, lambda ack: ack.epoch >= epoch, f"rank 0's acknowledgement of plan {epoch}"
    )


def test_rank_0_acknowledges_a_refused_plan_and_an_applied_one(nats_server: NatsServer) -> None:
    options = ConnectionOptions(servers=(nats_server.url,), name="test-plans")
    watcher = PlanWatcher(options, namespace=NAMESPACE, job=JOB, poll_s=0.05)
    follower = PlanFollower(World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")), watcher)
    try:
        # Epoch 0: an expert placement for a job without expert parallelism, and shares for 3 of its 4 ranks.
        refused = _plan(0, [0.5, 0.25, 0.25], expert_placement=[[[0], [0], [0], [0]]] * 4)
        asyncio.run(put_plan_at(nats_server.url, refused))
        wait_until(lambda: watcher.newest() is not None, "the plan read by rank 0", timeout_s=20)
        follower.agree(False, lambda: SHAPE)
        assert follower.pending is None  # nothing of it applies
        ack = _stored_ack(nats_server.url, 0)
        assert ack.outcome is AckOutcome.REFUSED and ack.running == RunningParts()
        assert len(ack.refused) == 2 and "3 ranks" in ack.refused[0] and "expert parallelism" in ack.refused[1]

        # Epoch 1: shares it can apply, at step 4: acknowledged once applied, with the epoch its shares run from.
        asyncio.run(put_plan_at(nats_server.url, _plan(1, [0.375, 0.25, 0.25, 0.125])))
        wait_until(lambda: (watcher.newest() or refused).epoch == 1, "the second plan read", timeout_s=20)
        follower.agree(False, lambda: SHAPE)
        assert (
            follower.due(3) is None and asyncio.run(newest_ack(nats_server.url, NAMESPACE, JOB)) == ack
        )  # not yet applied
        changes = follower.due(4)
        assert changes is not None and changes.shares == (12, 8, 8, 4)
        applied = _stored_ack(nats_server.url, 1)
        assert applied.outcome is AckOutcome.APPLIED and applied.refused == [] and applied.step == 4
        assert applied.running == RunningParts(data=1, experts=STARTED, stages=STARTED)
    finally:
        watcher.close()


async def test_the_service_plans_from_what_runs_not_from_a_refused_plan(nats_server: NatsServer) -> None:
    straggler = [1.0, 1.0, 1.0, 0.6]
    async with jetstream(nats_server.url) as js, running(make_service(nats_server.url)) as service:
        await publish_steps(js, range(10), straggler)
        plan = await stored_plan(js, 0)
        assert sequences_from_fractions(plan.data_shares, BATCH) == [9, 9, 9, 5]
        # Rank 0 refuses the shares: the even split still runs.
        acks = await ensure_plan_acks_bucket(js)
        reason = "uneven data shares are not applied under pipeline parallelism"
        ack = PlanAck(namespace=NAMESPACE, job=JOB, epoch=0, outcome=AckOutcome.REFUSED, refused=[reason],
                      step=plan.apply_at_step, acked_at_unix_s=time.time())  # fmt: skip
        await put_ack(acks, ack)
        service.report_interval_s = 0.0  # a report every round: the refusal shows in the next one
        # Past the interval, the straggler is as slow as before: measured against the even split that runs, the same
        # shares pay again, so they are planned again (believing the refused plan, its gain would be nil: no plan).
        await publish_steps(js, range(10, 60), straggler)
        again = await stored_plan(js, 1)
        assert sequences_from_fractions(again.data_shares, BATCH) == [9, 9, 9, 5] and again.predicted_gain > 0.3
        assert service.counters.plans_refused == 1
        state = service.jobs[(NAMESPACE, JOB)]
        assert state.last_refusal is not None and state.last_refusal.epoch == 0
        report_bucket = await ensure_reports_bucket(js)

        async def report_shows_refusal() -> bool:
            report = await latest_report(report_bucket, NAMESPACE, JOB)
            return report is not None and report.refused_epoch == 0 and report.refusal == reason

        await eventually_async(report_shows_refusal, "the report shows the refusal")


async def test_an_applied_plan_is_believed_and_not_planned_again(nats_server: NatsServer) -> None:
    straggler = [1.0, 1.0, 1.0, 0.6]
    async with jetstream(nats_server.url) as js, running(make_service(nats_server.url)) as service:
        await publish_steps(js, range(10), straggler)
        plan = await stored_plan(js, 0)
        acks = await ensure_plan_acks_bucket(js)
        await put_ack(acks, PlanAck(namespace=NAMESPACE, job=JOB, epoch=0, outcome=AckOutcome.APPLIED,
                                    step=plan.apply_at_step, running=RunningParts(data=0),
                                    acked_at_unix_s=time.time()))  # fmt: skip
        await publish_steps(js, range(10, 60), straggler)
        await eventually(lambda: service.counters.ingested["accepted"] == 240, "all 240 records folded in")
        await eventually(lambda: service.jobs[(NAMESPACE, JOB)].ack is not None, "the acknowledgement read")
        assert service.counters.plans_published == 1 and service.counters.plans_refused == 0
        assert service.jobs[(NAMESPACE, JOB)].belief()[1] == [9, 9, 9, 5]


async def eventually_async(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout_s}s: {what}")
        await asyncio.sleep(0.05)
