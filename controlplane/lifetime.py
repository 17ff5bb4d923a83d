"""What a server process does for its whole life: background tasks that must not end unseen, and a garbage
collector set for thousands of long-lived streams."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable, Coroutine
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


async def release_memory_after_bursts(
    activity: Callable[[], int], quiet_seconds: float = 1.0, release: Callable[[], object] | None = None
) -> None:
    """Once a burst of work (a connect storm, a push to thousands of streams) has been quiet for
    `quiet_seconds`, hands the memory it freed back to the system. glibc keeps freed memory for reuse
    otherwise, so an idle server would stay at the size of its last storm. `activity()` is a count that
    moves with work done (responses sent); `release()` does the releasing, in a worker thread (about
    45 ms at 5,000 streams). A collection here as well would hold the event loop for 250 ms and free
    nothing that shows in the process's size."""
    release = release or _release_memory
    last, pending = activity(), False
    while True:
        await asyncio.sleep(quiet_seconds)
        now = activity()
        if now != last:
            last, pending = now, True
        elif pending:
            pending = False
            started = time.perf_counter()
            await asyncio.to_thread(release)  # glibc's trim lets go of the GIL: the loop goes on meanwhile
            log.debug("memory released after a burst in %.1f ms", (time.perf_counter() - started) * 1000)


def _release_memory() -> None:
    _malloc_trim(0)


def _find_malloc_trim() -> Callable[[int], object]:
    """glibc's malloc_trim, or nothing where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError, TypeError):
        return lambda pad: None


_malloc_trim = _find_malloc_trim()


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_coro(), exc_info=task.exception())
