"""Per-step metrics behind a small interface. Publishing never blocks or slows a training step: sinks get
records through a bounded buffer drained by a background thread, and a full buffer drops (and counts)."""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StepMetrics:
    step: int
    rank: int
    loss: float
    """Cross-entropy of this step over all ranks' answer tokens (the optimised objective, without aux terms)."""
    aux_loss: float
    tokens: int
    """Tokens this rank processed this step."""
    step_seconds: float
    compute_seconds: float
    comm_seconds: float
    """Time blocked in collectives this rank measured (gradient all-reduce and metric reductions)."""
    lr: float
    tokens_per_expert: list[list[int]] = field(default_factory=list)
    """Per MoE layer, assignments per expert on this rank (the rebalancer's load input)."""
    max_memory_bytes: int = 0


class MetricsSink(Protocol):
    def publish(self, record: StepMetrics) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Discards every record (no metrics destination configured)."""

    def publish(self, record: StepMetrics) -> None:
        """Nothing to send."""

    def close(self) -> None:
        """Nothing to release."""


class JsonlSink:
    """One JSON line per step (local runs and tests)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def publish(self, record: StepMetrics) -> None:
        self._file.write(json.dumps(asdict(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class BackgroundSink:
    """Wraps a sink so that the training loop only ever does a non-blocking `put`."""

    def __init__(self, inner: MetricsSink, capacity: int = 1024) -> None:
        self._inner = inner
        self._queue: queue.Queue[StepMetrics | None] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self._thread = threading.Thread(target=self._drain, name="metrics-sink", daemon=True)
        self._thread.start()

    def publish(self, record: StepMetrics) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _drain(self) -> None:
        while (record := self._queue.get()) is not None:
            self._inner.publish(record)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._inner.close()
