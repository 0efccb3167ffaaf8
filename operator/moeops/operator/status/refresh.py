"""The operator's periodic status refresh, the pure half: which sources are due, and what changed.

The figures other services keep on the bus (rank 0's progress, the rebalancer's reports, the carbon totals, the
model servers' load) reach `.status` through one operator-level loop (`handlers/status_loop.py`), not a kopf timer
per object: kopf puts a finalizer on every object a timer or daemon runs for, so `kubectl delete` would hang while
the operator is down. Each source keeps its own cadence; the loop sleeps until the next one is due, runs the due
sources over every active object it knows, and patches an object's status once, with the fields that changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


@dataclass
class Schedule:
    """When each named source runs next (monotonic seconds). A source runs first after its interval."""

    intervals: Mapping[str, float]
    started_at: float
    _next: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, interval in self.intervals.items():
            if interval <= 0:
                raise ValueError(f"the interval of {name} must be positive, not {interval}")
        self._next = {name: self.started_at + interval for name, interval in self.intervals.items()}

    def due(self, now: float) -> list[str]:
        """The sources due at `now`, in their declared order; each is scheduled again one interval later (from
        `now`, so that a slow pass delays the next one instead of queueing passes up)."""
        names = [name for name in self.intervals if self._next[name] <= now]
        for name in names:
            self._next[name] = now + self.intervals[name]
        return names

    def sleep_s(self, now: float) -> float:
        """How long until the next source is due (0 when one is due already)."""
        return max(0.0, min(self._next.values(), default=now) - now)


def changed_fields(fresh: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `fresh` whose value is not what `status` says (a field absent from status differs)."""
    return {key: value for key, value in fresh.items() if status.get(key) != value}


def merged(patches: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The fields of several sources' patches as one status patch (the sources write disjoint fields)."""
    out: dict[str, Any] = {}
    for patch in patches:
        out.update(patch)
    return out


def with_status(body: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The object as it would read after a merge patch of its status's top-level fields (each source's patch holds
    whole fields: a condition list, a progress block)."""
    return {**body, "status": {**(body.get("status") or {}), **patch}}


def leads_peers(peers: Mapping[str, Mapping[str, Any]], own_priority: int, now: datetime) -> bool:
    """Whether this replica is the one that acts, from a kopf peering object's status (peer id → priority, lifetime,
    lastseen): no live peer has a higher priority. kopf pauses the handlers of the others, but not this loop, so it
    asks the same question itself. (A peer of the same priority is taken for this replica: priorities are drawn at
    random from 2**31.)"""
    for peer in peers.values():
        lastseen = datetime.fromisoformat(str(peer.get("lastseen")).replace("Z", "+00:00"))
        alive = now < lastseen + timedelta(seconds=float(peer.get("lifetime") or 0))
        if alive and int(peer.get("priority") or 0) > own_priority:
            return False
    return True
