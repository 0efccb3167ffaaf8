"""What the model server's app and its routes share: the settings it was started with and the state it serves from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moeops.serving.decoding.early_exit import ExitPolicy
from moeops.serving.decoding.engine import Engine
from moeops.serving.latency import LatencyRecorder
from moeops.serving.loader import ServedModel

if TYPE_CHECKING:
    from moeops.serving.load_reporter import LoadReporter

DEFAULT_MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    policy: ExitPolicy
    """The service's early exit (InferenceService spec.earlyExit); a request may override it."""
    max_batch_size: int = 16
    max_latency_ms: float = 10.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    batched_matmuls: bool = True
    """Full-depth sequences of a round in one pass (engine.py); False: batching of scheduling only."""
    service: str | None = None
    """The InferenceService and namespace, for the load reporter (None: no reporting)."""
    namespace: str | None = None
    max_queued: int = 256
    """Requests waiting for a place in the batch beyond which a new one is answered 429 with Retry-After."""
    body_timeout_s: float | None = 30.0
    """A request body not all arrived after this long is answered 408 (a trickling client holds no socket)."""
    request_timeout_s: float | None = 600.0
    """A request still generating after this long is cancelled (504, or an error event in a stream); None: never."""


@dataclass
class ServerState:
    settings: ServerSettings
    served: ServedModel | None = None
    engine: Engine | None = None
    load_error: str | None = None
    reporter: LoadReporter | None = None
    """Publishes this server's load on NATS for the autoscaler (load_reporter.py), when MOEOPS_NATS_URL is set."""
    started: float = field(default_factory=time.time)
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)
    """Time to first token, per output token and per request (the app gives it the OpenTelemetry meter)."""

    @property
    def ready(self) -> bool:
        return self.served is not None and self.engine is not None and self.engine.running
