"""Fixtures for integration tests against real servers (here: nats-server with JetStream)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from missing import NATS_SERVER, missing
from moeops.devcluster.nats_server import NatsServer, find_nats_server

NatsServerFactory = Callable[..., NatsServer]


@pytest.fixture
def nats_server_factory(tmp_path: Path) -> Iterator[NatsServerFactory]:
    """Starts nats-servers (each in its own folder, with optional extra flags) and stops them all afterwards.

    Without a nats-server binary the test is skipped, or fails under CI=true, as the e2e tests do without their
    control plane."""
    if find_nats_server() is None:
        missing(NATS_SERVER)
    servers: list[NatsServer] = []

    def start(*extra_args: str) -> NatsServer:
        server = NatsServer(tmp_path / f"nats-{len(servers)}", extra_args=extra_args)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop(crash=True)  # the test is over: nothing to shut down cleanly


@pytest.fixture
def nats_server(nats_server_factory: NatsServerFactory) -> NatsServer:
    """A fresh nats-server with JetStream on free loopback ports; `stop()`/`start()` restart it on the same
    ports and store."""
    return nats_server_factory()
