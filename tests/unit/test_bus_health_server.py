"""The health HTTP server without NATS: what /healthz and /readyz answer for given heartbeats and checks, other paths,
a check that raises, and a port that is taken."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

import pytest

from moeops.bus.health import HealthSettings, Heartbeat
from moeops.bus.health_server import HealthServer

LOOPBACK = HealthSettings(addr="127.0.0.1", port=0, stale_after_s=0.5)


async def get(server: HealthServer, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """GET from a thread (the server answers from its own; the loop must stay free for the readiness checks)."""

    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{host}:{server.port}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    return await asyncio.to_thread(fetch)


async def test_the_probes_answer_with_the_heartbeats_and_the_checks() -> None:
    main = Heartbeat("main loop", 0.1)
    reason: list[str | None] = ["NATS: reconnecting"]

    async def nats() -> str | None:
        return reason[0]

    async def broken() -> str | None:
        raise RuntimeError("boom")

    async with HealthServer(LOOPBACK, "svc", [main], [nats]) as server:
        assert server.port > 0  # port 0: the OS chose one
        assert await get(server, "/healthz") == (200, "ok\n")  # not beaten yet: starting
        assert await get(server, "/readyz") == (503, "NATS: reconnecting\n")
        reason[0] = None
        assert await get(server, "/readyz?verbose=1") == (200, "ok\n")
        main.beat()
        await asyncio.sleep(0.7)  # the main loop stopped going round; the event loop did not
        status, body = await get(server, "/healthz")
        assert status == 503 and body.startswith("main loop: no progress for ") and body.endswith("(limit 0.5 s)\n")
        assert "event loop" not in body
        main.beat()
        assert await get(server, "/healthz") == (200, "ok\n")
        assert (await get(server, "/metrics"))[0] == 404
        server.readiness.append(broken)
        assert await get(server, "/readyz") == (503, "check failed: RuntimeError: boom\n")


async def test_a_taken_port_is_an_error_that_names_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"svc: cannot serve health on 127.0.0.1:{port}"):
            async with HealthServer(HealthSettings("127.0.0.1", port), "svc", [], []):
                pass


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
async def test_an_ipv6_address_is_served() -> None:
    try:
        async with HealthServer(HealthSettings("::1", 0), "svc", [], []) as server:
            assert await get(server, "/healthz", host="[::1]") == (200, "ok\n")
    except OSError as exc:  # IPv6 compiled in but not configured (a container without ::1)
        pytest.skip(f"no ::1 here: {exc}")
