"""What the server does for its whole life: memory freed by a burst of work is handed back once the burst
is over, and only then (in-process; the effect on the process's size is measured by tests/fleet_bench.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from controlplane.lifetime import release_memory_after_bursts, run_for_life


def test_memory_is_released_once_after_each_burst_and_never_while_idle() -> None:
    # What each check finds: idle, a burst (the count moves), quiet, a second burst, quiet for long.
    readings = iter([0, 0, 0, 100, 200, 300, 300, 300, 300, 400, 500, 500, 500, 500])
    seen: list[int] = []
    released: list[int] = []

    def activity() -> int:
        try:
            seen.append(next(readings))
        except StopIteration:
            raise asyncio.CancelledError from None
        return seen[-1]

    async def scenario() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await release_memory_after_bursts(activity, quiet_seconds=0, release=lambda: released.append(len(seen)))

    asyncio.run(scenario())
    # Released at the first quiet check after each burst: the 7th reading (300 again), the 12th (500 again).
    assert released == [7, 12]


def test_a_background_task_that_ends_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("lost its way")

    async def scenario() -> None:
        [task] = run_for_life(broken())
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, logger="controlplane.lifetime"):
        asyncio.run(scenario())
    assert "background task" in caplog.text and "lost its way" in caplog.text
