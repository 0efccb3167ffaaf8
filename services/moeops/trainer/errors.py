"""Errors a worker reports by exit code, so that the Job controller can tell them apart."""

from __future__ import annotations

import sys

from moeops.api.env import EXIT_CODE_INVALID_CONFIG

EXIT_PREEMPTED = 143  # 128 + SIGTERM: checkpointed and stopped; the pod is replaced, not counted as failed.


class ConfigError(ValueError):
    """The configuration can never work: exit with EXIT_CODE_INVALID_CONFIG (the Job fails at once)."""

    exit_code = EXIT_CODE_INVALID_CONFIG

    def report(self) -> int:
        """Say what is wrong on stderr, the one line a user or `kubectl logs` sees; returns the exit code."""
        print(f"moeops train: configuration error: {self}", file=sys.stderr, flush=True)
        return self.exit_code
