"""The rebalancer's NATS edge: worker metrics in from the METRICS stream, plans out to the plans KV bucket.

Thin on purpose: decoding, aggregation and planning are the pure modules (`load`, `replan`); this module only moves
bytes. It consumes with a durable push consumer (`consumer`), a batch at a time: every message of the batch is
folded in, each job the batch touched is planned once, and then the batch is acked with one ack, so a restarted
service resumes after the last batch it acked (the first start reads everything the stream still holds), and a
batch redelivered after a crash is dropped by the aggregator as duplicates. The latest plan of every job is read
back from the KV bucket on start, so epochs continue where they stopped, and plans are written with a
compare-and-set. While a job's newest plan is not acknowledged by its rank 0, each round reads the job's
acknowledgement (the plan acks bucket) before planning it, and plans from what it says runs (`JobState.belief`);
each plan is judged on the step time it delivered, and a kind of re-plan that does not pay backs off (outcomes.py).
Messages that cannot be decoded are counted by reason and acked (redelivering them would not make
them readable); nothing a worker sends can stop the service. While NATS is away the client reconnects in the
background and the consumer's deliveries resume when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from moeops.bus.buckets import ensure_jobs_bucket, ensure_reports_bucket, job_description, put_report
from moeops.bus.connection import ConnectionOptions, connect
from moeops.bus.health import Heartbeat
from moeops.bus.messages import BadMessage, RebalancePlan
from moeops.bus.plan_ack_store import ensure_plan_acks_bucket, latest_ack
from moeops.bus.streams import ensure_metrics_stream, ensure_plans_bucket, latest_plan, put_plan
from moeops.bus.subjects import METRICS_STREAM, metrics_filter, token

from .consumer import ConsumerLimits, MetricsConsumer
from .ingest import Counters, Ingest, LagObserver
from .jobs import JobKey, JobSettings, JobState
from .policy import DEFAULT_APPLY_MARGIN_STEPS

logger = logging.getLogger(__name__)

DESCRIBE_RETRY_S = 5.0
"""How often to look again for the description of a job whose metrics arrive without one."""


class _Buckets(NamedTuple):
    plans: KeyValue
    jobs: KeyValue
    reports: KeyValue
    acks: KeyValue


@dataclass
class _Round:
    """What was folded in since the last planning round: the jobs it touched and its last message."""

    touched: set[JobKey] = field(default_factory=set)
    last: Msg | None = None
    count: int = 0

    def add(self, touched: set[JobKey], messages: list[Msg]) -> None:
        if messages:
            self.touched |= touched
            self.last = messages[-1]
            self.count += len(messages)

    def full(self, limits: ConsumerLimits) -> bool:
        """Half the consumer's max_ack_pending waits for an ack: plan (and ack) now rather than stall delivery."""
        return self.count >= limits.max_ack_pending // 2


class RebalancerService:
    """Consumes one or more jobs' metrics and publishes their plans; `run(stop)` until `stop` is set."""

    def __init__(
        self,
        options: ConnectionOptions,
        jobs: Sequence[JobSettings] = (),
        *,
        durable: str | None = None,
        batch: int = 2048,
        fetch_timeout_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        limits: ConsumerLimits | None = None,
        plan_interval_s: float = 0.2,
        report_interval_s: float = 5.0,
        observe: LagObserver | None = None,
        min_samples: int = 5,
        apply_margin_steps: int = DEFAULT_APPLY_MARGIN_STEPS,
    ) -> None:
        """`batch`: the most messages taken from the consumer at once; `fetch_timeout_s`: how long to wait for a
        message before looking at `stop` again; `plan_interval_s`: the least time between two planning rounds (a
        round plans every job touched since the last one, then acks what was folded in); `report_interval_s`: how
        often a job's report (plan epoch, utilization: the operator's `.status.rebalance`) is rewritten;
        `observe`: told the measurement times of the records folded in (a benchmark measures the lag with it);
        `min_samples`, `apply_margin_steps`: the settings of the jobs it discovers (`jobs` carry their own).

        Without `jobs` the service serves every job that describes itself in the jobs bucket (rank 0 of each
        job writes its layout and settings there): one rebalancer for the whole cluster."""
        self.options = options
        self.jobs = {settings.key: JobState.of(settings) for settings in jobs}
        if len(self.jobs) != len(jobs):
            raise ValueError("a job is listed twice")
        self.discover = not jobs
        self.discovered_min_samples = min_samples
        self.discovered_apply_margin_steps = apply_margin_steps
        self.undescribed: dict[JobKey, float] = {}
        """Jobs whose metrics arrived without a known description: when to look them up (monotonic)."""
        if len(jobs) == 1:
            only = jobs[0]
            self.filter = metrics_filter(only.namespace, only.job)
            default_durable = f"moeops-rebalancer-{token(only.namespace)}-{token(only.job)}"
        else:
            self.filter = metrics_filter()
            default_durable = "moeops-rebalancer"
        self.durable = durable or default_durable
        self.batch = batch
        self.fetch_timeout_s = fetch_timeout_s
        self.clock = clock
        self.limits = limits or ConsumerLimits(max_ack_pending=max(ConsumerLimits().max_ack_pending, 4 * batch))
        self.plan_interval_s = plan_interval_s
        self.report_interval_s = report_interval_s
        self.counters = Counters()
        self.ingest = Ingest(self.jobs, self.counters, self.discover, self.undescribed, observe)
        self.ready = asyncio.Event()
        """Set once connected, with the stream, bucket and consumer in place and the stored plans read."""
        self.client: Client | None = None
        """The NATS client while `run` runs (the health server reads its state)."""
        self.heartbeat = Heartbeat("rebalancer's main loop", fetch_timeout_s)
        """Beaten every round of the main loop, which goes round at least every `fetch_timeout_s` (also while
        NATS is away) when nothing blocks it: see `moeops.bus.health`."""

    @property
    def bad_messages(self) -> Counter[str]:
        return self.counters.bad_messages

    def latest(self, namespace: str, job: str) -> RebalancePlan | None:
        """The newest plan this service knows for the job (read on start or published since)."""
        return self.jobs[(namespace, job)].previous

    async def run(self, stop: asyncio.Event) -> None:
        self.client = client = await connect(self.options)
        consumer: MetricsConsumer | None = None
        try:
            js = client.jetstream()
            await ensure_metrics_stream(js)
            kv = _Buckets(
                await ensure_plans_bucket(js),
                await ensure_jobs_bucket(js),
                await ensure_reports_bucket(js),
                await ensure_plan_acks_bucket(js),
            )
            for state in self.jobs.values():
                await self._recover_plan(kv, state)
            consumer = MetricsConsumer(js, METRICS_STREAM, self.filter, self.durable, self.limits)
            await consumer.start(client.new_inbox())
            self.ready.set()
            pending = _Round()
            planned_at = -math.inf
            while not stop.is_set():
                self.heartbeat.beat()
                due = planned_at + self.plan_interval_s - time.monotonic()
                wait = min(self.fetch_timeout_s, max(0.0, due)) if pending.last else self.fetch_timeout_s
                messages = await consumer.next_batch(self.batch, stop, wait)
                pending.add(self.ingest.batch(messages), messages)
                if pending.last and (
                    time.monotonic() >= planned_at + self.plan_interval_s or pending.full(self.limits)
                ):
                    stored = await self._plan_round(kv, consumer, pending)
                    # A plan that could not be written is planned again in the next round (with newer data).
                    pending, planned_at = _Round(touched=set() if stored else pending.touched), time.monotonic()
            if pending.last:  # stopping: plan and ack what was folded in, so that a restart does not re-read it
                await self._plan_round(kv, consumer, pending)
        finally:
            if consumer is not None:
                await consumer.close()
            await self._close(client)

    async def _recover_plan(self, kv: _Buckets, state: JobState) -> None:
        namespace, job = state.settings.key
        try:
            stored = await latest_plan(kv.plans, namespace, job)
        except BadMessage as exc:
            self.counters.bad_messages[exc.reason.value] += 1
            logger.warning("ignoring the stored plan of %s/%s: %s", namespace, job, exc)
            return
        if stored is not None:
            state.adopt(*stored)
            logger.info("%s/%s: resuming after plan epoch %d", namespace, job, stored[0].epoch)
            await self._read_ack(kv.acks, state)

    async def _read_ack(self, kv: KeyValue, state: JobState) -> None:
        """Take the job's newest acknowledgement, if any (a bad one is counted and ignored)."""
        try:
            ack = await latest_ack(kv, *state.settings.key)
        except BadMessage as exc:
            self.counters.bad_messages[exc.reason.value] += 1
            return
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            logger.debug("cannot read the plan acknowledgement of %s/%s: %s", *state.settings.key, exc)
            return
        if ack is None or (state.ack is not None and ack.epoch <= state.ack.epoch):
            return
        state.acknowledged(ack)
        if ack.refused:
            self.counters.plans_refused += 1
            logger.warning("%s/%s: plan epoch %d refused in part: %s (planning from what runs)",
                           *state.settings.key, ack.epoch, "; ".join(ack.refused))  # fmt: skip

    async def _discover(self, kv: _Buckets) -> None:
        """Look up the descriptions of jobs whose metrics came in unannounced (at most every few seconds each)."""
        now = time.monotonic()
        for key, due in sorted(self.undescribed.items()):
            if due > now:
                continue
            self.undescribed[key] = now + DESCRIBE_RETRY_S
            try:
                description = await job_description(kv.jobs, *key)
            except BadMessage as exc:
                self.counters.bad_messages[exc.reason.value] += 1
                continue
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                logger.debug("cannot read the description of %s/%s: %s", *key, exc)
                continue
            if description is None:
                continue
            del self.undescribed[key]
            settings = JobSettings.from_description(description, min_samples=self.discovered_min_samples,
                                                    apply_margin_steps=self.discovered_apply_margin_steps)  # fmt: skip
            state = self.jobs[key] = JobState.of(settings)
            await self._recover_plan(kv, state)
            logger.info("%s/%s: serving (world %d, %s)", *key, description.world_size, state.settings.layout)

    async def _report(self, kv: KeyValue, touched: set[JobKey]) -> None:
        """Rewrite the report of each job touched this round, at most every `report_interval_s`."""
        now = time.monotonic()
        for key in sorted(touched):
            state = self.jobs[key]
            if now - state.reported_at < self.report_interval_s:
                continue
            report = state.report(self.clock())
            if report is None:
                continue
            try:
                await put_report(kv, report)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                logger.debug("cannot write the report of %s/%s: %s", *key, exc)
                continue
            state.reported_at = now
            self.counters.reports_written += 1

    async def _plan_round(self, kv: _Buckets, consumer: MetricsConsumer, pending: _Round) -> bool:
        """Plans every job the round touched, then acks the round; False (and no ack) if a plan was not stored."""
        plan_errors = self.counters.plan_errors
        for key in sorted(pending.touched):
            if self.jobs[key].awaiting_ack:
                await self._read_ack(kv.acks, self.jobs[key])
            await self._plan(kv.plans, self.jobs[key])
        await self._report(kv.reports, pending.touched)
        if self.undescribed:
            await self._discover(kv)
        stored = self.counters.plan_errors == plan_errors
        # Ack after planning: a crash in between redelivers them, which the aggregator sees as duplicates.
        if stored and pending.last is not None:
            await consumer.ack(pending.last)
        self.counters.fetch_errors = consumer.ack_errors
        return stored

    async def _plan(self, kv: KeyValue, state: JobState) -> None:
        settings = state.settings
        judged_before = state.outcomes.last
        try:
            outcome = state.next_outcome(self.clock())
        except ValueError as exc:  # e.g. a world too large for the global batch: log, keep serving other jobs
            self.counters.verdicts["error"] += 1
            logger.warning("%s/%s: cannot plan: %s", settings.namespace, settings.job, exc)
            return
        if (judged := state.outcomes.last) is not judged_before and judged is not None:
            logger.info("%s/%s: plan epoch %d (%s) predicted %.1f%%, measured %.1f%%: %s", settings.namespace,
                        settings.job, judged.epoch, "+".join(judged.parts), 100 * judged.predicted_gain,
                        100 * judged.realised_gain, "paid" if judged.paid else "backing off")  # fmt: skip
            self.counters.plans_judged["paid" if judged.paid else "missed"] += 1
        if outcome.verdict is not None:
            self.counters.verdicts[outcome.verdict.value] += 1
        if outcome.plan is not None:
            await self._store(kv, state, outcome.plan, full=outcome.full, parts=outcome.parts)

    async def _store(
        self, kv: KeyValue, state: JobState, plan: RebalancePlan, *, full: bool, parts: tuple[str, ...]
    ) -> None:
        """Writes the plan if the stored one is still the one it follows; else adopts the stored one."""
        settings = state.settings
        try:
            try:
                revision = await put_plan(kv, plan, last_revision=state.revision)
            except KeyWrongLastSequenceError:
                self.counters.plan_conflicts += 1
                stored = await latest_plan(kv, settings.namespace, settings.job)
                if stored is not None:
                    state.adopt(*stored)
                return
        except (nats.errors.Error, OSError, TimeoutError) as exc:  # the server is away: planned again next round
            self.counters.plan_errors += 1
            logger.warning("%s/%s: cannot store the plan: %s", settings.namespace, settings.job, exc)
            return
        state.adopt(plan, revision, full=full, parts=parts)
        self.counters.plans_published += 1
        logger.info(
            "%s/%s: plan epoch %d at step %d, shares %s (predicted gain %.1f%%)",
            settings.namespace,
            settings.job,
            plan.epoch,
            plan.apply_at_step,
            state.current_shares,
            100 * plan.predicted_gain,
        )

    async def _close(self, client: Client) -> None:
        # Flush (the last ack), then close.
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await client.flush(timeout=2)
        await client.close()
