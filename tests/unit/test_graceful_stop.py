"""run_until_stopped: how long a service gets after the stop, depending on how far it got."""

from __future__ import annotations

import asyncio
import time

import pytest

from moeops.bus.graceful_stop import run_until_stopped


async def _stop_soon(stop: asyncio.Event) -> None:
    await asyncio.sleep(0.05)
    stop.set()


def test_a_service_that_is_not_ready_is_cancelled_at_once() -> None:
    cleaned_up: list[bool] = []

    async def connecting_forever(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)  # never checks `stop`, like a first connect to a NATS that is not there
        finally:
            cleaned_up.append(True)

    async def main() -> float:
        stop, ready = asyncio.Event(), asyncio.Event()
        stopper = asyncio.create_task(_stop_soon(stop))
        started = time.monotonic()
        await run_until_stopped(connecting_forever, stop, what="test", ready=ready, grace_s=30.0)
        await stopper
        return time.monotonic() - started

    assert asyncio.run(main()) < 5.0
    assert cleaned_up == [True]


def test_a_ready_service_finishes_its_last_round_within_the_grace() -> None:
    finished: list[bool] = []

    async def last_round_after_stop(stop: asyncio.Event) -> None:
        await stop.wait()
        await asyncio.sleep(0.2)  # plans and acks what it folded in
        finished.append(True)

    async def main() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        ready.set()
        stopper = asyncio.create_task(_stop_soon(stop))
        await run_until_stopped(last_round_after_stop, stop, what="test", ready=ready, grace_s=5.0)
        await stopper

    asyncio.run(main())
    assert finished == [True]


def test_a_ready_service_still_busy_after_the_grace_is_cancelled() -> None:
    async def wedged(stop: asyncio.Event) -> None:
        await asyncio.sleep(3600)  # e.g. a request to a server that went away

    async def main() -> float:
        stop = asyncio.Event()
        stopper = asyncio.create_task(_stop_soon(stop))
        started = time.monotonic()
        await run_until_stopped(wedged, stop, what="test", grace_s=0.3)
        await stopper
        return time.monotonic() - started

    took = asyncio.run(main())
    assert 0.3 <= took < 5.0


def test_a_failure_before_the_stop_is_raised() -> None:
    async def failing(stop: asyncio.Event) -> None:
        raise RuntimeError("bad credentials")

    with pytest.raises(RuntimeError, match="bad credentials"):
        asyncio.run(run_until_stopped(failing, asyncio.Event(), what="test"))
