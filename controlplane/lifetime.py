"""What a server process does for its whole life: background tasks that must not end unseen, and a garbage
collector set for thousands of long-lived streams."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


def run_for_life(*work: Coroutine[Any, Any, None]) -> list[asyncio.Task[None]]:
    """Starts tasks meant to run until they are cancelled: one that ends otherwise is a bug, logged."""
    tasks = [asyncio.create_task(w) for w in work]
    for task in tasks:
        task.add_done_callback(_report_end)
    return tasks


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def freeze_startup_objects() -> None:
    """What start-up made lives as long as the server: out of the collector's sight, so that collections
    with thousands of streams open scan only what changes. Streams allocate much and keep little."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_coro(), exc_info=task.exception())
