"""An asyncio loop of its own on a background thread: how the trainer's NATS clients stay off the training thread.

Also the one way moeops stops a task that may swallow its cancellation. Before Python 3.12, `asyncio.wait_for`
returns the inner result when a cancellation arrives just as the inner future completes (bpo-42130). nats-py's
first connect waits on `wait_for(open_connection(...))` inside a retry loop that catches every Exception: a
cancellation landing together with a refused connection is lost, and the loop tries the server again, forever.
CI saw it as a metrics sink whose close() waited on a connect that never ended.
"""

from __future__ import annotations

import asyncio
import logging
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
