"""Folding delivered worker metrics into the jobs' load aggregators: the rebalancer's per-message path (pure: the
messages are anything with a `subject` and `data`, no NATS here).

The budget is tight: 50k messages a second on one core is 20 µs a message, and nats-py alone takes about 10 of
them. A message at a time through `decode` costs another 10 or so (struct, the model's checks by hand, a
WorkerMetrics, the fold). But every rank except COUNTS_RANK sends the same small record (no expert counts) step
after step, so a delivered batch is mostly runs of equally long records of one job: such a run is read as columns
with numpy in one pass, its values checked as the model checks them, all at once, and folded in record by record
from plain Python numbers, without a message object. A run with anything the checks refuse, and every other
message, takes the one-at-a-time path, whose results (and BadMessage reasons) define what a run must give:
tests/unit/test_rebalancer_ingest.py folds the same deliveries both ways and compares the aggregators.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np

from moeops.bus import metrics_wire
from moeops.bus.messages import BadMessage, WorkerMetrics, decode, names_fit, parse_cached

from .jobs import JobKey, JobState
from .load import Ingested

NOT_A_METRICS_MESSAGE = "not_metrics"
UNKNOWN_JOB = "unknown_job"
"""Extra `bad_messages` reasons beside BadMessageReason's values."""
MIN_RUN: Final = 8
"""Shorter runs go one message at a time: below this, setting up the columns costs more than it saves."""
_ACCEPTED: Final = Ingested.ACCEPTED
_RESTARTED: Final = Ingested.RESTARTED


class Delivered(Protocol):
    """A delivered message (nats-py's Msg, or anything else with these)."""

    @property
    def subject(self) -> str: ...

    @property
    def data(self) -> bytes: ...


@dataclass
class Counters:
    received: int = 0
    ingested: Counter[str] = field(default_factory=Counter)
    """By `Ingested` value: accepted, duplicate, stale, not_usable, restarted."""
    bad_messages: Counter[str] = field(default_factory=Counter)
    """By `BadMessageReason` value, plus `not_metrics` and `unknown_job`."""
    verdicts: Counter[str] = field(default_factory=Counter)
    plans_published: int = 0
    plan_conflicts: int = 0
    """Writes refused because another planner stored a plan first (its plan is adopted)."""
    plan_errors: int = 0
    """Plans that could not be written (the server was away): planned again, and the round not acked."""
    reports_written: int = 0
    plans_refused: int = 0
    plans_judged: Counter[str] = field(default_factory=Counter)
    """Plans judged after they ran (outcomes.py): "paid", or "missed" (their parts backed off)."""
    """Acknowledgements from a job's rank 0 that refused a part of a plan (jobs.py: not believed)."""
    fetch_errors: int = 0
    """Acks that failed (the server was away): those messages come again and are dropped as duplicates."""


LagObserver = Callable[[Sequence[float]], None]
"""Told the `measured_at_unix_s` of the records folded in (accepted or not), as they are."""


@dataclass
class Ingest:
    """Folds batches of delivered messages into `jobs`; unknown jobs are noted in `undescribed` when `discover`."""

    jobs: dict[JobKey, JobState]
    counters: Counters
    discover: bool = False
    undescribed: dict[JobKey, float] = field(default_factory=dict)
    observe: LagObserver | None = None

    def batch(self, messages: Sequence[Delivered]) -> set[JobKey]:
        """Folds the messages in, in order; the jobs that took at least one record."""
        touched: set[JobKey] = set()
        at, count = 0, len(messages)
        while at < count:
            end, state, ranks = self._plain_run(messages, at)
            if end - at >= MIN_RUN and state is not None:
                taken = self._fold_run(state, messages[at:end], ranks)
                if taken is not None:
                    if taken:
                        touched.add(state.settings.key)
                    at = end
                    continue
            for message in messages[at : max(end, at + 1)]:
                key = self.one(message.subject, message.data)
                if key is not None:
                    touched.add(key)
            at = max(end, at + 1)
        return touched

    def one(self, subject: str, data: bytes) -> JobKey | None:
        """Folds one message in (the reference path); its job if the record was taken."""
        self.counters.received += 1
        try:
            decoded = decode(subject, data)
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
            if self.discover:
                self.undescribed.setdefault(key, 0.0)
            return None
        if self.observe is not None:
            self.observe((decoded.measured_at_unix_s,))
        return self.accept(state, decoded)

    def accept(self, state: JobState, metrics: WorkerMetrics) -> JobKey | None:
        outcome = state.aggregator.ingest(metrics)
        if metrics.layer_compute_seconds and outcome is _ACCEPTED:
            state.layer_costs.fold(metrics.layer_compute_seconds)
        return self._took(state, outcome)

    def _took(self, state: JobState, outcome: Ingested) -> JobKey | None:
        self.counters.ingested[outcome.value] += 1
        if outcome is _RESTARTED:  # back at a checkpoint: the minimum interval counts from now on
            state.last_applied_step = state.last_full_step = None
        return state.settings.key if outcome is _ACCEPTED or outcome is _RESTARTED else None

    def _plain_run(self, messages: Sequence[Delivered], start: int) -> tuple[int, JobState | None, list[int]]:
        """Where the run of plain records (no expert counts, all as long as the first, of its job, each on a
        metrics subject of that job) that starts at `start` ends, the job's state, and the subjects' ranks."""
        data = messages[start].data
        parsed = parse_cached(messages[start].subject)
        if not data.startswith(metrics_wire.PLAIN_PREFIX) or parsed is None or parsed.rank is None:
            return start, None, []
        try:
            fields = metrics_wire.read_fields(data)
        except metrics_wire.WireError:
            return start, None, []
        state = self.jobs.get((fields["namespace"], fields["job"]))
        if fields["tokens_per_expert"] or state is None or not names_fit(parsed, fields["namespace"], fields["job"]):
            return start, None, []
        length, names = len(data), data[metrics_wire.HEAD_SIZE :]
        ranks, end = [parsed.rank], start + 1
        for message in messages[start + 1 :]:
            data = message.data
            if len(data) != length or not data.endswith(names):
                break
            other = parse_cached(message.subject)
            if (
                other is None
                or other.rank is None
                or other.namespace_token != parsed.namespace_token
                or other.job_token != parsed.job_token
            ):
                break
            ranks.append(other.rank)
            end += 1
        return end, state, ranks

    def _fold_run(self, state: JobState, run: Sequence[Delivered], ranks: list[int]) -> bool | None:
        """Folds a run in if every record passes the model's checks: whether a record was taken (None, and
        nothing done, if a record does not pass)."""
        first = run[0].data
        columns = np.frombuffer(
            b"".join(message.data for message in run),
            dtype=metrics_wire.plain_dtype(len(first) - metrics_wire.HEAD_SIZE),
        )
        rank_column = columns["rank"]
        # The model's checks (see messages._fast_metrics), for the whole run at once; names were checked on the
        # first record and are the same bytes in every other.
        valid = (
            (columns["magic"] == metrics_wire.MAGIC)
            & (columns["schema_version"] == metrics_wire.SCHEMA_VERSION)
            & (columns["layers"] == 0)
            & (columns["namespace_len"] == columns["namespace_len"][0])
            & (columns["job_len"] == columns["job_len"][0])
            & (rank_column == np.asarray(ranks))
            & (rank_column < columns["world_size"])
            & _finite_non_negative(columns["step_seconds"])
            & _finite_non_negative(columns["compute_seconds"])
            & _finite_non_negative(columns["comm_seconds"])
            & _finite_non_negative(columns["lr"])
            & np.isfinite(columns["measured_at_unix_s"])
        )
        if not valid.all():
            return None
        self.counters.received += len(run)
        measured = columns["measured_at_unix_s"].tolist()
        if self.observe is not None:
            self.observe(measured)
        fold, accepted, taken = state.aggregator.fold, 0, False
        for rank, step, world_size, tokens, compute_seconds, step_seconds, measured_at in zip(
            ranks,
            columns["step"].tolist(),
            columns["world_size"].tolist(),
            columns["tokens"].tolist(),
            columns["compute_seconds"].tolist(),
            columns["step_seconds"].tolist(),
            measured,
            strict=True,
        ):
            outcome = fold(rank, step, world_size, tokens, compute_seconds, step_seconds, measured_at, [])
            if outcome is _ACCEPTED:
                accepted += 1
            else:
                taken = self._took(state, outcome) is not None or taken
        self.counters.ingested[_ACCEPTED.value] += accepted
        return taken or accepted > 0


def _finite_non_negative(values: np.ndarray) -> np.ndarray:
    return (values >= 0.0) & (values < np.inf)
