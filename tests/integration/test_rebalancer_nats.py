"""The rebalancer's NATS edge against a real nats-server: metrics in through the stream, a plan out to the KV
bucket; bad bytes counted, never fatal; a restart keeps the epoch and does not re-read acked metrics; the service
outlives a NATS outage; the pull consumer of earlier versions is replaced without re-reading what it acked."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from nats.js import JetStreamContext
from plan_acks_bus import jetstream
from polling import eventually

import bus_records
from moeops.bus.buckets import ensure_jobs_bucket, ensure_reports_bucket, latest_report, put_description
from moeops.bus.connection import ConnectionOptions
from moeops.bus.jobs import JobDescription
from moeops.bus.messages import BadMessageReason, RebalancePlan, WorkerMetrics, encode
from moeops.bus.plan_shares import sequences_from_fractions
from moeops.bus.streams import ensure_plans_bucket, latest_plan
from moeops.bus.subjects import METRICS_STREAM, MSG_ID_HEADER, metrics_filter, metrics_subject
from moeops.devcluster.nats_server import NatsServer
from moeops.rebalancer.edge import RebalancerService
from moeops.rebalancer.ingest import UNKNOWN_JOB
from moeops.rebalancer.jobs import JobSettings
from moeops.rebalancer.policy import APPLY_LEAD_S, Hysteresis

pytestmark = pytest.mark.nats

NAMESPACE, JOB = "team-a", "llm.v2"
WORLD, BATCH = 4, 32


def worker_metrics(rank: int, step: int, speed: float, *, job: str = JOB) -> WorkerMetrics:
    compute = 0.1 / speed
    return bus_records.worker_metrics(
        rank, step, namespace=NAMESPACE, job=job, world_size=WORLD, tokens=2048, step_seconds=0.1 / 0.6,
        compute_seconds=compute, comm_seconds=0.1 / 0.6 - compute, measured_at_unix_s=time.time(),
    )  # fmt: skip


async def publish_steps(js: JetStreamContext, steps: range, speeds: list[float]) -> None:
    for step in steps:
        for rank, speed in enumerate(speeds):
            message = worker_metrics(rank, step, speed)
            await js.publish(message.subject, encode(message), headers={MSG_ID_HEADER: message.msg_id})


@asynccontextmanager
async def running(service: RebalancerService) -> AsyncIterator[RebalancerService]:
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), timeout=20)
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)  # re-raises what ended the service, if anything did


def make_service(url: str, reconnect_wait_max_s: float = 10.0, plan_interval_s: float = 0.0) -> RebalancerService:
    """Planning after every batch by default (the verdict counts below expect that); the service's own default
    plans at most every 0.2 s."""
    settings = JobSettings(
        NAMESPACE,
        JOB,
        BATCH,
        Hysteresis(min_gain=0.05, interval_steps=20, apply_margin_steps=5),
        stage_layers=((0, 4),),
    )
    options = ConnectionOptions(
        servers=(url,), name="test-rebalancer", reconnect_wait_s=0.05, reconnect_wait_max_s=reconnect_wait_max_s
    )
    return RebalancerService(options, [settings], fetch_timeout_s=0.2, plan_interval_s=plan_interval_s)


async def stored_plan(js: JetStreamContext, epoch: int) -> RebalancePlan:
    kv = await ensure_plans_bucket(js)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stored = await latest_plan(kv, NAMESPACE, JOB)
        if stored is not None and stored[0].epoch >= epoch:
            return stored[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no plan of epoch {epoch} in the bucket")


async def test_a_straggler_gets_a_smaller_share_through_the_bus(nats_server: NatsServer) -> None:
    async with jetstream(nats_server.url) as js, running(make_service(nats_server.url)) as service:
        await publish_steps(js, range(10), [1.0, 1.0, 1.0, 0.6])
        plan = await stored_plan(js, 0)
        assert plan.epoch == 0
        margin = math.ceil(APPLY_LEAD_S / (0.1 / 0.6))  # 2 s of these 0.17-s steps: 12 (more than the 5 set)
        assert 4 + margin <= plan.apply_at_step <= 9 + margin  # planned once every rank reported 5 steps
        assert sequences_from_fractions(plan.data_shares, BATCH) == [9, 9, 9, 5]
        assert plan.stage_layers == [(0, 4)]
        assert plan.predicted_gain > 0.3
        await eventually(lambda: service.counters.ingested["accepted"] == 40, "all 40 records folded in")
        assert service.counters.plans_published == 1  # later steps are inside the interval
        assert service.counters.verdicts["too_soon"] >= 1
        assert service.latest(NAMESPACE, JOB) == plan


async def test_bad_messages_are_counted_and_dropped(nats_server: NatsServer) -> None:
    subject = metrics_subject(NAMESPACE, JOB, 0)
    good = encode(worker_metrics(0, 0, 1.0))
    wrong_version = good.replace(b'"schema_version":1', b'"schema_version":99')
    assert wrong_version != good
    other_job = worker_metrics(0, 0, 1.0, job="other")
    async with jetstream(nats_server.url) as js, running(make_service(nats_server.url)) as service:
        await js.publish(subject, b"\x00\xffnot json at all")
        await js.publish(subject, good[: len(good) // 2])
        await js.publish(subject, wrong_version)
        await js.publish(subject, b'{"schema_version": 1, "namespace": "team-a"}')
        await js.publish(metrics_subject(NAMESPACE, JOB, 1), good)  # rank 0's body on rank 1's subject
        await js.publish(other_job.subject, encode(other_job))  # another job: not in this service's filter
        await eventually(lambda: service.counters.received == 5, "five bad messages received")
        assert service.bad_messages == {
            BadMessageReason.NOT_JSON.value: 1,
            BadMessageReason.TRUNCATED.value: 1,
            BadMessageReason.WRONG_SCHEMA_VERSION.value: 1,
            BadMessageReason.INVALID.value: 1,
            BadMessageReason.SUBJECT_MISMATCH.value: 1,
        }
        assert UNKNOWN_JOB not in service.bad_messages
        # Still serving: good metrics after the garbage produce a plan.
        await publish_steps(js, range(10), [1.0, 0.6, 1.0, 1.0])
        plan = await stored_plan(js, 0)
        assert sequences_from_fractions(plan.data_shares, BATCH) == [9, 5, 9, 9]


@pytest.mark.parametrize("plan_interval_s", [0.0, 0.2], ids=["plan-every-batch", "plan-every-0.2s"])
async def test_a_restarted_service_keeps_the_epoch_and_skips_acked_metrics(
    nats_server: NatsServer, plan_interval_s: float
) -> None:
    async with jetstream(nats_server.url) as js:
        async with running(make_service(nats_server.url, plan_interval_s=plan_interval_s)) as first:
            await publish_steps(js, range(10), [1.0, 1.0, 1.0, 0.6])
            plan = await stored_plan(js, 0)
            await eventually(lambda: first.counters.ingested["accepted"] == 40, "all 40 records folded in")
        assert plan.epoch == 0

        async with running(make_service(nats_server.url)) as second:
            assert second.latest(NAMESPACE, JOB) == plan  # read back from the bucket on start
            await asyncio.sleep(1.0)  # several fetches: acked metrics must not come back
            assert second.counters.received == 0
            # After the interval, the straggler has moved: rank 0 is slow now, rank 3 recovered.
            await publish_steps(js, range(plan.apply_at_step + 20, plan.apply_at_step + 30), [0.6, 1.0, 1.0, 1.0])
            replanned = await stored_plan(js, 1)
            assert replanned.epoch == plan.epoch + 1
            assert sequences_from_fractions(replanned.data_shares, BATCH) == [5, 9, 9, 9]
            await eventually(lambda: second.counters.received == 40, "only the 40 new records received")
            await asyncio.sleep(0.5)
            assert second.counters.received == 40


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])
async def test_the_rebalancer_outlives_a_nats_outage(nats_server: NatsServer, crash: bool) -> None:
    speeds = [1.0, 1.0, 1.0, 0.6]
    async with running(make_service(nats_server.url, reconnect_wait_max_s=0.5, plan_interval_s=0.2)) as service:
        async with jetstream(nats_server.url) as js:
            await publish_steps(js, range(3), speeds)  # too few steps for a plan (min_samples 5)
            await eventually(lambda: service.counters.ingested["accepted"] == 12, "the first 12 records folded in")
        nats_server.stop(crash=crash)  # the bus goes away mid-run, and comes back on the same port and store
        nats_server.start()
        async with jetstream(nats_server.url) as js:
            await publish_steps(js, range(3, 10), speeds)
            plan = await stored_plan(js, 0)  # needs the steps from before the outage and after it
            assert sequences_from_fractions(plan.data_shares, BATCH) == [9, 9, 9, 5]
            await eventually(lambda: service.counters.ingested["accepted"] == 40, "all 40 records folded in")
        assert service.latest(NAMESPACE, JOB) == plan
        assert service.counters.plans_published == 1


async def test_a_pull_consumer_of_an_earlier_version_is_replaced_after_its_acks(nats_server: NatsServer) -> None:
    service = make_service(nats_server.url)
    async with jetstream(nats_server.url) as js:
        await publish_steps(js, range(3), [1.0, 1.0, 1.0, 0.6])
        old = await js.pull_subscribe(metrics_filter(NAMESPACE, JOB), durable=service.durable, stream=METRICS_STREAM)
        for message in await old.fetch(8, timeout=5):  # the old service folded in and acked the first 8
            await message.ack_sync()
        await old.unsubscribe()
        async with running(service):
            await eventually(lambda: service.counters.received == 4, "the 4 unacked records received")
            await publish_steps(js, range(3, 10), [1.0, 1.0, 1.0, 0.6])
            await eventually(lambda: service.counters.received == 32, "and the 28 new ones")
            info = await js.consumer_info(METRICS_STREAM, service.durable)
            assert info.config.deliver_subject  # a push consumer now


async def test_one_rebalancer_serves_a_job_that_describes_itself_and_reports_on_it(nats_server: NatsServer) -> None:
    options = ConnectionOptions(servers=(nats_server.url,), name="cluster-rebalancer")
    service = RebalancerService(options, fetch_timeout_s=0.2, plan_interval_s=0.0, report_interval_s=0.0)
    description = JobDescription(namespace=NAMESPACE, job=JOB, world_size=WORLD, global_batch=BATCH, layers=4,
                                 stage_layers=[(0, 4)], min_gain=0.05, interval_steps=20,
                                 described_at_unix_s=time.time())  # fmt: skip
    async with jetstream(nats_server.url) as js, running(service):
        await put_description(await ensure_jobs_bucket(js), description)
        await publish_steps(js, range(1), [1.0, 1.0, 1.0, 0.6])  # unannounced until looked up: dropped
        await eventually(lambda: (NAMESPACE, JOB) in service.jobs, "the job learnt from its description")
        await publish_steps(js, range(1, 12), [1.0, 1.0, 1.0, 0.6])
        plan = await stored_plan(js, 0)
        assert sequences_from_fractions(plan.data_shares, BATCH) == [9, 9, 9, 5]
        reports = await ensure_reports_bucket(js)

        async def reported() -> bool:
            report = await latest_report(reports, NAMESPACE, JOB)
            return report is not None and report.plan_epoch == 0

        deadline = time.monotonic() + 10
        while not await reported():
            assert time.monotonic() < deadline, "no report with the plan's epoch"
            await asyncio.sleep(0.05)
        report = await latest_report(reports, NAMESPACE, JOB)
        assert report is not None and report.ranks_reporting == WORLD and report.world_size == WORLD
        # Every rank's step takes 0.1/0.6 s; compute 0.1 s on three ranks, 0.1/0.6 s on the straggler.
        assert report.utilization == pytest.approx((3 * 0.1 + 0.1 / 0.6) / (4 * 0.1 / 0.6), rel=1e-6)
        assert service.counters.bad_messages[UNKNOWN_JOB] >= 1


async def test_the_services_own_settings_apply_to_the_jobs_it_discovers(nats_server: NatsServer) -> None:
    """--min-samples and --apply-margin-steps are the service's, not the job's: a described job gets them too."""
    options = ConnectionOptions(servers=(nats_server.url,), name="cluster-rebalancer")
    service = RebalancerService(options, fetch_timeout_s=0.2, plan_interval_s=0.0, min_samples=8, apply_margin_steps=15)
    description = JobDescription(namespace=NAMESPACE, job=JOB, world_size=WORLD, global_batch=BATCH, layers=4,
                                 stage_layers=[(0, 4)], min_gain=0.05, interval_steps=20,
                                 described_at_unix_s=time.time())  # fmt: skip
    async with jetstream(nats_server.url) as js, running(service):
        await put_description(await ensure_jobs_bucket(js), description)
        await publish_steps(js, range(1), [1.0, 1.0, 1.0, 0.6])
        await eventually(lambda: (NAMESPACE, JOB) in service.jobs, "the job learnt from its description")
        await publish_steps(js, range(1, 8), [1.0, 1.0, 1.0, 0.6])  # 7 samples: one short
        await eventually(lambda: service.counters.received >= 32, "the 28 records folded in")
        await asyncio.sleep(1.0)  # planning rounds: none may plan before 8 samples (the default 5 would)
        assert service.latest(NAMESPACE, JOB) is None
        await publish_steps(js, range(8, 9), [1.0, 1.0, 1.0, 0.6])
        plan = await stored_plan(js, 0)
        assert plan.apply_at_step == 8 + 15  # more than the 12 steps of APPLY_LEAD_S at 1/6 s a step
