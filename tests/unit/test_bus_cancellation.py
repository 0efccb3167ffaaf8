"""Stopping NATS work for sure: a lost cancellation (asyncio.wait_for before 3.12, inside nats-py's connect loop)
must not leave a metrics sink's close(), or the operator's report reader, waiting forever."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

from moeops.bus import loop_thread
from moeops.bus.connection import ConnectionOptions, connect
from moeops.bus.loop_thread import cancel_until_done


async def test_a_task_that_swallows_cancellations_is_cancelled_until_it_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 3:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_until_done(task)
    assert task.cancelled() and swallowed == 3


async def test_a_task_that_never_ends_is_reported_not_waited_on_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_thread, "CANCEL_ATTEMPTS", 3)
    released = asyncio.Event()

    async def immortal() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    task = asyncio.create_task(immortal())
    await asyncio.sleep(0)
    assert not await cancel_until_done(task)
    assert not task.done()
    released.set()  # let it end, so that the test's loop closes cleanly
    await task


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_connecting_to_an_absent_server_stops_when_cancelled_at_any_moment() -> None:
    # Refused connects return at once, so cancellations often land as an attempt completes: the race that nats-py
    # loses. Cancel at many offsets; every cancel must end the connect within a second.
    options = ConnectionOptions(servers=(f"nats://127.0.0.1:{free_port()}",), reconnect_wait_s=0.001)
    for attempt in range(60):
        task = asyncio.create_task(connect(options))
        await asyncio.sleep(0.0005 * (attempt % 12))
        task.cancel()
        started = time.monotonic()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert done, f"connect() still running 2 s after cancel (attempt {attempt})"
        assert task.cancelled()
        assert time.monotonic() - started < 1.0
