"""An asyncio loop of its own on a background thread: how the trainer's NATS clients stay off the training thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


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
    """What asyncio.run does on exit: nats-py's reader, flusher and ping tasks end cancelled, not destroyed."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
