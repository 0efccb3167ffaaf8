"""The rebalancer's OpenTelemetry instruments: its `ingest.Counters` as observable counters.

The service already counts what it does (`RebalancerService.counters`); the SDK's reader reads those counts when it
collects, so nothing is added to the ingest path. Registered by the CLI after `moeops.telemetry.setup`:

    moeops.rebalancer.messages.received   {message}  worker-metrics messages delivered
    moeops.rebalancer.messages.ingested   {message}  by moeops.ingest.result (accepted, duplicate, stale, ...)
    moeops.rebalancer.messages.bad        {message}  by moeops.bad_message.reason
    moeops.rebalancer.plans.published     {plan}     plans written to the plans bucket
    moeops.rebalancer.plans.failed        {plan}     by moeops.plan.failure: conflict (another planner won), error
    moeops.rebalancer.rounds              {round}    planning rounds by moeops.verdict
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, ObservableCounter, Observation

from .ingest import Counters

Callback = Callable[[CallbackOptions], Iterable[Observation]]


def _by(counter: Callable[[], Counter[str]], attribute: str) -> Callback:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {attribute: key}) for key, n in dict(counter()).items()]

    return observe


def _total(read: Callable[[], int]) -> Callback:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(read())]

    return observe


def _failures(counters: Counters) -> Callback:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(counters.plan_conflicts, {"moeops.plan.failure": "conflict"}),
            Observation(counters.plan_errors, {"moeops.plan.failure": "error"}),
        ]

    return observe


def register(meter: Meter, counters: Counters) -> list[ObservableCounter]:
    """Observable counters reading `counters` (kept alive by the meter; returned for tests)."""
    prefix = "moeops.rebalancer"
    return [
        meter.create_observable_counter(f"{prefix}.messages.received", [_total(lambda: counters.received)],
                                        unit="{message}", description="Worker-metrics messages delivered."),
        meter.create_observable_counter(f"{prefix}.messages.ingested",
                                        [_by(lambda: counters.ingested, "moeops.ingest.result")],
                                        unit="{message}", description="Messages folded in, by result."),
        meter.create_observable_counter(f"{prefix}.messages.bad",
                                        [_by(lambda: counters.bad_messages, "moeops.bad_message.reason")],
                                        unit="{message}", description="Messages dropped as malformed, by reason."),
        meter.create_observable_counter(f"{prefix}.plans.published", [_total(lambda: counters.plans_published)],
                                        unit="{plan}", description="Rebalance plans published."),
        meter.create_observable_counter(f"{prefix}.plans.failed", [_failures(counters)], unit="{plan}",
                                        description="Plans not written: another planner's won, or the bus was away."),
        meter.create_observable_counter(f"{prefix}.rounds", [_by(lambda: counters.verdicts, "moeops.verdict")],
                                        unit="{round}", description="Planning rounds, by verdict."),
        meter.create_observable_counter(f"{prefix}.plans.refused", [_total(lambda: counters.plans_refused)],
                                        unit="{plan}", description="Plans the workers refused a part of."),
        meter.create_observable_counter(f"{prefix}.plans.judged",
                                        [_by(lambda: counters.plans_judged, "moeops.plan.outcome")], unit="{plan}",
                                        description="Plans judged on the step time they delivered: paid or missed."),
    ]  # fmt: skip
