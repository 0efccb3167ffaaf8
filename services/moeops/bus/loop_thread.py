"""An asyncio loop of its own on a background thread: how the trainer's NATS clients stay off the training thread.

Also the one way moeops stops a task that may swallow its cancellation. Before Python 3.12, `asyncio.wait_for`
returns the inner result when a cancellation arrives just as the inner future completes (bpo-42130). nats-py's
first connect waits on `wait_for(open_connection(...))` inside a retry loop that catches every Exception: a
cancellation landing together with a refused connection is lost, and the loop tries the server again, forever.
CI saw it as a metrics sink whose close() waited on a connect that never ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

CANCEL_RETRY_S = 0.05
"""How long a cancelled task gets to end before it is cancelled again."""
CANCEL_ATTEMPTS = 100


def run_own_loop(loop: asyncio.AbstractEventLoop, main: Callable[[], Awaitable[None]], what: str) -> None:
    """Run `main()` to completion on `loop` (the thread's target); log, never raise, what ends it abnormally,
    and leave nothing pending behind (nats-py's reader, flusher and ping tasks end cancelled, not destroyed)."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main())
    except Exception:
        logger.exception("%s failed", what)
    finally:
        cancel_remaining_tasks(loop)
        loop.close()


def cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does on exit, robust to lost cancellations: nats-py's tasks end cancelled, not destroyed."""
    if tasks := asyncio.all_tasks(loop):
        loop.run_until_complete(cancel_until_done(*tasks))
    loop.run_until_complete(loop.shutdown_asyncgens())


async def cancel_until_done(*tasks: asyncio.Future[Any]) -> bool:
    """Cancel `tasks` and wait for them to end, cancelling again while one goes on (see the module docstring).
    True when all ended; False (logged) if one still runs after CANCEL_ATTEMPTS tries: it is left behind."""
    pending = {task for task in tasks if not task.done()}
    for _ in range(CANCEL_ATTEMPTS):
        if not pending:
            return True
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_RETRY_S)
    if pending:
        logger.warning("%d task(s) ignored %d cancellations; left running", len(pending), CANCEL_ATTEMPTS)
        return False
    return True


class BackgroundLoop:
    """One coroutine, `main()`, on an asyncio loop of its own on a daemon thread: the shape of the trainer's NATS
    clients (metrics publisher, progress putter), whose public methods run on the training thread and must never block
    it. The training thread wakes the loop with `wake()` and ends it with `begin_close()`; `main()` waits on the two
    events. `start()` is separate from construction so that the owner can keep a reference before `main()` runs."""

    def __init__(self, main: Callable[[], Awaitable[None]], *, thread_name: str, what: str) -> None:
        """`what` names the client in the log line of an abnormal end (e.g. "the progress putter")."""
        self.loop = asyncio.new_event_loop()
        self.wakeup = asyncio.Event()
        """Set from any thread by `wake()`; `main()` clears it after waking."""
        self.closing = asyncio.Event()
        """Set (with `wakeup`) by `begin_close()`: `main()` finishes what it must and returns."""
        self._thread = threading.Thread(
            target=run_own_loop, args=(self.loop, main, what), name=thread_name, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def call(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the loop's thread, soon; nothing when the loop has already closed."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to wake
            self.loop.call_soon_threadsafe(callback)

    def wake(self) -> None:
        self.call(self.wakeup.set)

    def begin_close(self) -> None:
        self.call(self._set_closing)

    def join(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for `main()` to end; False if the thread is still busy (it is a daemon: left)."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _set_closing(self) -> None:
        self.closing.set()
        self.wakeup.set()
