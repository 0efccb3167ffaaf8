"""How a long-running moeops service (rebalancer, carbon aggregator and agent) ends on SIGTERM or SIGINT.

The kubelet sends SIGTERM on delete or rollout and SIGKILLs what still runs after the grace period (30 s by
default). A service's `run(stop)` checks `stop` in its main loop, but not while it awaits something else: the first
connect to an unreachable NATS retries forever (see `connection.connect`), and a request to a server that went away
waits for its timeout. So the service runs as a task of its own, watched here: once stopped, a service that had not
become ready yet (nothing folded in, nothing to save) is cancelled at once; a ready one gets `grace_s` to finish its
last round (plan and ack, checkpoint), then is cancelled. Cancelling is safe in every phase: `connect` closes a
connection made as it was cancelled, and the services close their client in `finally`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from .loop_thread import cancel_until_done

STOP_GRACE_S = 10.0
"""How long a ready service gets to finish after the stop: well inside the kubelet's default 30 s."""

logger = logging.getLogger(__name__)


def stop_on_signals(stop: asyncio.Event, what: str) -> None:
    """SIGINT and SIGTERM set `stop` (on the running loop), with one log line for the first of them."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            logger.info("%s: %s received; stopping", what, signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


async def run_until_stopped(
    run: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    *,
    what: str,
    ready: asyncio.Event | None = None,
    grace_s: float = STOP_GRACE_S,
) -> None:
    """Runs `run(stop)` to its end, or, once `stop` is set, until it returns, for at most `grace_s` when `ready` is
    set or absent and not at all when `ready` is not set yet; then cancels it. A failure of `run` before the stop
    is raised (the pod restarts); what goes wrong while it is cancelled is logged."""
    main = asyncio.ensure_future(run(stop))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({main, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if main.done():
            main.result()
            return
        if ready is None or ready.is_set():
            await asyncio.wait({main}, timeout=grace_s)
            if main.done():
                main.result()
                return
            logger.warning("%s: still busy %.0f s after the stop; cancelling it", what, grace_s)
        else:
            logger.info("%s: stopped before it was ready (still connecting or setting up); cancelling it", what)
        await cancel_until_done(main)
        if main.done() and not main.cancelled() and (exc := main.exception()) is not None:
            logger.warning("%s: ended with %r while cancelled", what, exc)
    finally:
        await cancel_until_done(stopping, main)
