"""MOEOPS_NATS_* → nats.connect keyword arguments, and the reconnect backoff. No server."""

from __future__ import annotations

import inspect
import logging
import random
import ssl
from pathlib import Path
from urllib.parse import urlparse

import pytest
from nats.aio.client import Server

from moeops.api import env
from moeops.bus.connection import (
    DEFAULT_URL,
    BusConfigError,
    ConnectionLog,
    ConnectionOptions,
    backoff_delay,
    backoff_handler,
)


def test_defaults_reconnect_forever_with_logging_callbacks() -> None:
    options = ConnectionOptions.from_env({}, name="worker-0")
    kwargs = options.connect_kwargs(random.Random(0))
    assert kwargs["servers"] == [DEFAULT_URL]
    assert kwargs["name"] == "worker-0"
    assert kwargs["allow_reconnect"] is True
    assert kwargs["max_reconnect_attempts"] == -1
    assert 0.5 * options.reconnect_wait_s <= kwargs["reconnect_time_wait"] <= options.reconnect_wait_s
    assert kwargs["connect_timeout"] == options.connect_timeout_s
    assert kwargs["ping_interval"] * kwargs["max_outstanding_pings"] <= 60  # a dead server noticed within a minute
    for callback in ("error_cb", "disconnected_cb", "reconnected_cb", "closed_cb"):
        assert inspect.iscoroutinefunction(kwargs[callback]), callback  # nats-py refuses plain functions
    assert callable(kwargs["reconnect_to_server_handler"])
    assert not {"token", "user_credentials", "nkeys_seed", "tls"} & kwargs.keys()


def test_server_list_and_token() -> None:
    environ = {env.NATS_URL: " nats://a:4222, nats://b:4222 ,", env.NATS_TOKEN: "s3cret"}
    with pytest.raises(BusConfigError, match="names no server"):
        ConnectionOptions.from_env(environ)  # the trailing comma leaves an empty URL
    environ[env.NATS_URL] = " nats://a:4222, nats://b:4222 "
    kwargs = ConnectionOptions.from_env(environ).connect_kwargs()
    assert kwargs["servers"] == ["nats://a:4222", "nats://b:4222"]
    assert kwargs["token"] == "s3cret"


def test_empty_variables_count_as_unset() -> None:
    options = ConnectionOptions.from_env({env.NATS_URL: "", env.NATS_TOKEN: "  ", env.NATS_TLS_CA: ""})
    assert options == ConnectionOptions()


def test_creds_and_nkey_files(tmp_path: Path) -> None:
    creds, seed = tmp_path / "user.creds", tmp_path / "user.nk"
    creds.write_text("jwt and seed")
    seed.write_text("SUAM...")
    assert ConnectionOptions.from_env({env.NATS_CREDS: str(creds)}).connect_kwargs()["user_credentials"] == str(creds)
    assert ConnectionOptions.from_env({env.NATS_NKEY_SEED: str(seed)}).connect_kwargs()["nkeys_seed"] == str(seed)
    with pytest.raises(BusConfigError, match="at most one"):
        ConnectionOptions.from_env({env.NATS_CREDS: str(creds), env.NATS_TOKEN: "t"})
    with pytest.raises(BusConfigError, match="does not exist"):
        ConnectionOptions.from_env({env.NATS_CREDS: str(tmp_path / "missing.creds")})


def test_tls_context_trusts_the_given_ca_and_presents_the_client_certificate(
    tls_certificate: tuple[Path, Path],
) -> None:
    cert, key = tls_certificate
    kwargs = ConnectionOptions.from_env({env.NATS_TLS_CA: str(cert)}).connect_kwargs()
    context = kwargs["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1
    mutual = ConnectionOptions.from_env(
        {env.NATS_TLS_CA: str(cert), env.NATS_TLS_CERT: str(cert), env.NATS_TLS_KEY: str(key)}
    )
    assert isinstance(mutual.connect_kwargs()["tls"], ssl.SSLContext)
    with pytest.raises(BusConfigError, match="go together"):
        ConnectionOptions.from_env({env.NATS_TLS_CERT: str(cert)})


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (60, 5.0), (10_000, 5.0)]:
        delays = [backoff_delay(attempt, 0.5, 5.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert max(delays) - min(delays) > ceiling / 4  # spread out, not in lockstep


def test_reconnects_go_to_the_least_tried_server() -> None:
    a, b, c = (Server(uri=urlparse(f"nats://{host}:4222"), reconnects=n) for host, n in [("a", 3), ("b", 1), ("c", 2)])
    choose = backoff_handler(0.5, 5.0, random.Random(2))
    server, delay = choose([a, b, c], {})
    assert server is b
    assert 0.5 <= delay <= 1.0  # b failed once: half to all of 0.5 × 2


async def test_connection_log_warns_once_per_kind_of_error_until_reconnected(caplog: pytest.LogCaptureFixture) -> None:
    log = ConnectionLog("worker-3")
    with caplog.at_level(logging.DEBUG, logger="moeops.bus.connection"):
        for _ in range(5):
            await log.error(ConnectionRefusedError("refused"))
        await log.reconnected()
        await log.error(ConnectionRefusedError("refused"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "worker-3" in warnings[0].getMessage() and "ConnectionRefusedError" in warnings[0].getMessage()
