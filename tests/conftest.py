"""Shared test configuration. Tiers: unit (pure, no server), integration (kmock faults, a real nats-server),
e2e (real cluster). Across them, `slow` marks what is slow by nature (processes, compilers, long
parametrisations): `make test-fast` leaves it out, `make test` runs everything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# The tests' models are tiny: intra-op threads only add synchronisation, and on 2 busy cores a spinning OpenMP pool
# made the kv-cache and engine tests 6x slower (46 s against 8 s). Set before anything imports torch, so the
# subprocesses the tests start (trainers, servers) inherit it; an OMP_NUM_THREADS of one's own wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: it is its own CA (server, client and trust root)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
