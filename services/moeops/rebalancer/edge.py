"""The rebalancer's NATS edge: worker metrics in from the METRICS stream, plans out to the plans KV bucket.

Thin on purpose: decoding, aggregation and planning are the pure modules (`load`, `replan`); this module only moves
bytes. It consumes with a durable push consumer (`consumer`), a batch at a time: every message of the batch is
folded in, each job the batch touched is planned once, and then the batch is acked with one ack, so a restarted
service resumes after the last batch it acked (the first start reads everything the stream still holds), and a
batch redelivered after a crash is dropped by the aggregator as duplicates. The latest plan of every job is read
back from the KV bucket on start, so epochs continue where they stopped, and plans are written with a
compare-and-set. Messages that cannot be decoded are counted by reason and acked (redelivering them would not make
them readable); nothing a worker sends can stop the service. While NATS is away the client reconnects in the
background and the consumer's deliveries resume when it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from moeops.bus.connection import ConnectionOptions, connect
from moeops.bus.messages import BadMessage, RebalancePlan, WorkerMetrics, decode
from moeops.bus.streams import ensure_metrics_stream, ensure_plans_bucket, latest_plan, put_plan
from moeops.bus.subjects import METRICS_STREAM, metrics_filter, token

from .consumer import ConsumerLimits, MetricsConsumer
from .load import DEFAULT_SMOOTHING, Ingested, LoadAggregator
from .policy import Hysteresis
from .replan import replan_outcome, sequences_from_fractions

logger = logging.getLogger(__name__)

JobKey = tuple[str, str]
"""(namespace, job)."""

NOT_A_METRICS_MESSAGE = "not_metrics"
UNKNOWN_JOB = "unknown_job"
"""Extra `bad_messages` reasons beside BadMessageReason's values."""


@dataclass(frozen=True)
class JobSettings:
    """What the planner needs to know about one job beyond its metrics."""

    namespace: str
    job: str
    global_batch: int
    hysteresis: Hysteresis = field(default_factory=Hysteresis)
    stage_layers: tuple[tuple[int, int], ...] = ((0, 1),)
    """The job's current pipeline layout, carried into its first plan (later plans keep the previous one's)."""
    max_sequences_per_rank: int | None = None
    min_samples: int = 5
    """Steps every rank must have reported before a plan: one step's timing is too noisy to act on."""
    smoothing: float = DEFAULT_SMOOTHING

    @property
    def key(self) -> JobKey:
        return (self.namespace, self.job)


@dataclass
class _JobState:
    settings: JobSettings
    aggregator: LoadAggregator
    previous: RebalancePlan | None = None
    revision: int = 0
    """The plan's revision in the bucket (0: none stored), for a compare-and-set write."""
    current_shares: list[int] | None = None
    last_applied_step: int | None = None

    def adopt(self, plan: RebalancePlan, revision: int) -> None:
        self.previous, self.revision = plan, revision
        self.last_applied_step = plan.apply_at_step
        self.current_shares = sequences_from_fractions(plan.data_shares, self.settings.global_batch)


@dataclass
class Counters:
    received: int = 0
    ingested: Counter[str] = field(default_factory=Counter)
    """By `Ingested` value: accepted, duplicate, stale, not_usable."""
    bad_messages: Counter[str] = field(default_factory=Counter)
    """By `BadMessageReason` value, plus `not_metrics` and `unknown_job`."""
    verdicts: Counter[str] = field(default_factory=Counter)
    plans_published: int = 0
    plan_conflicts: int = 0
    """Writes refused because another planner stored a plan first (its plan is adopted)."""
    plan_errors: int = 0
    """Plans that could not be written (the server was away): planned again, and the round not acked."""
    fetch_errors: int = 0
    """Acks that failed (the server was away): those messages come again and are dropped as duplicates."""


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
        jobs: Sequence[JobSettings],
        *,
        durable: str | None = None,
        batch: int = 2048,
        fetch_timeout_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        limits: ConsumerLimits | None = None,
        plan_interval_s: float = 0.2,
    ) -> None:
        """`batch`: the most messages taken from the consumer at once; `fetch_timeout_s`: how long to wait for a
        message before looking at `stop` again; `plan_interval_s`: the least time between two planning rounds (a
        round plans every job touched since the last one, then acks what was folded in)."""
        if not jobs:
            raise ValueError("no jobs to rebalance")
        self.options = options
        self.jobs = {settings.key: _JobState(settings, LoadAggregator(settings.smoothing)) for settings in jobs}
        if len(self.jobs) != len(jobs):
            raise ValueError("a job is listed twice")
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
        self.counters = Counters()
        self.ready = asyncio.Event()
        """Set once connected, with the stream, bucket and consumer in place and the stored plans read."""

    @property
    def bad_messages(self) -> Counter[str]:
        return self.counters.bad_messages

    def latest(self, namespace: str, job: str) -> RebalancePlan | None:
        """The newest plan this service knows for the job (read on start or published since)."""
        return self.jobs[(namespace, job)].previous

    async def run(self, stop: asyncio.Event) -> None:
        client = await connect(self.options)
        consumer: MetricsConsumer | None = None
        try:
            js = client.jetstream()
            await ensure_metrics_stream(js)
            kv = await ensure_plans_bucket(js)
            await self._recover_plans(kv)
            consumer = MetricsConsumer(js, METRICS_STREAM, self.filter, self.durable, self.limits)
            await consumer.start(client.new_inbox())
            self.ready.set()
            pending = _Round()
            planned_at = -math.inf
            while not stop.is_set():
                due = planned_at + self.plan_interval_s - time.monotonic()
                wait = min(self.fetch_timeout_s, max(0.0, due)) if pending.last else self.fetch_timeout_s
                messages = await consumer.next_batch(self.batch, stop, wait)
                pending.add(self._ingest_batch(messages), messages)
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

    async def _recover_plans(self, kv: KeyValue) -> None:
        for (namespace, job), state in self.jobs.items():
            try:
                stored = await latest_plan(kv, namespace, job)
            except BadMessage as exc:
                self.counters.bad_messages[exc.reason.value] += 1
                logger.warning("ignoring the stored plan of %s/%s: %s", namespace, job, exc)
                continue
            if stored is not None:
                state.adopt(*stored)
                logger.info("%s/%s: resuming after plan epoch %d", namespace, job, stored[0].epoch)

    async def _plan_round(self, kv: KeyValue, consumer: MetricsConsumer, pending: _Round) -> bool:
        """Plans every job the round touched, then acks the round; False (and no ack) if a plan was not stored."""
        plan_errors = self.counters.plan_errors
        for key in sorted(pending.touched):
            await self._plan(kv, self.jobs[key])
        stored = self.counters.plan_errors == plan_errors
        # Ack after planning: a crash in between redelivers them, which the aggregator sees as duplicates.
        if stored and pending.last is not None:
            await consumer.ack(pending.last)
        self.counters.fetch_errors = consumer.ack_errors
        return stored

    def _ingest_batch(self, messages: list[Msg]) -> set[JobKey]:
        """Folds the messages in; the jobs that took at least one record."""
        touched: set[JobKey] = set()
        for message in messages:
            key = self._ingest(message)
            if key is not None:
                touched.add(key)
        return touched

    def _ingest(self, message: Msg) -> JobKey | None:
        self.counters.received += 1
        try:
            decoded = decode(message.subject, message.data)
        except BadMessage as exc:
            self.counters.bad_messages[exc.reason.value] += 1
            return None
        if not isinstance(decoded, WorkerMetrics):
            self.counters.bad_messages[NOT_A_METRICS_MESSAGE] += 1
            return None
        key = (decoded.namespace, decoded.job)
        state = self.jobs.get(key)
        if state is None:
            self.counters.bad_messages[UNKNOWN_JOB] += 1
            return None
        return self._accept(state, decoded)

    def _accept(self, state: _JobState, metrics: WorkerMetrics) -> JobKey | None:
        outcome = state.aggregator.ingest(metrics)
        self.counters.ingested[outcome.value] += 1
        return state.settings.key if outcome is Ingested.ACCEPTED else None

    async def _plan(self, kv: KeyValue, state: _JobState) -> None:
        settings = state.settings
        try:
            outcome = replan_outcome(
                state.aggregator.snapshot(),
                global_batch=settings.global_batch,
                current_shares=state.current_shares,
                hysteresis=settings.hysteresis,
                last_applied_step=state.last_applied_step,
                previous=state.previous,
                namespace=settings.namespace,
                job=settings.job,
                now_unix_s=self.clock(),
                stage_layers=settings.stage_layers,
                max_sequences_per_rank=settings.max_sequences_per_rank,
                min_samples=settings.min_samples,
            )
        except ValueError as exc:  # e.g. a world too large for the global batch: log, keep serving other jobs
            self.counters.verdicts["error"] += 1
            logger.warning("%s/%s: cannot plan: %s", settings.namespace, settings.job, exc)
            return
        if outcome.verdict is not None:
            self.counters.verdicts[outcome.verdict.value] += 1
        if outcome.plan is not None:
            await self._store(kv, state, outcome.plan)

    async def _store(self, kv: KeyValue, state: _JobState, plan: RebalancePlan) -> None:
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
        state.adopt(plan, revision)
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="moeops rebalancer: worker metrics in, rebalance plans out")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--global-batch", type=int, required=True, help="sequences per step over all ranks")
    parser.add_argument("--layers", type=int, default=1, help="model layers (one pipeline stage until re-planned)")
    parser.add_argument("--min-gain", type=float, default=0.05)
    parser.add_argument("--interval-steps", type=int, default=50)
    parser.add_argument("--apply-margin-steps", type=int, default=Hysteresis().apply_margin_steps)
    parser.add_argument("--disabled", action="store_true", help="consume metrics but never publish a plan")
    parser.add_argument("--max-sequences-per-rank", type=int, default=None)
    parser.add_argument("--min-samples", type=int, default=5, help="steps every rank reports before a plan")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> JobSettings:
    return JobSettings(
        namespace=args.namespace,
        job=args.job,
        global_batch=args.global_batch,
        hysteresis=Hysteresis(args.min_gain, args.interval_steps, args.apply_margin_steps, not args.disabled),
        stage_layers=((0, args.layers),),
        max_sequences_per_rank=args.max_sequences_per_rank,
        min_samples=args.min_samples,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the service until SIGINT/SIGTERM; NATS settings from MOEOPS_NATS_*, the job's from the flags."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = RebalancerService(ConnectionOptions.from_env(name="moeops-rebalancer"), [settings_from_args(args)])

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await service.run(stop)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
