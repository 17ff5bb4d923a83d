"""When to reload after a change: once the burst of events it belongs to is over. A `git checkout` of a
hundred files, an editor's save (temp file, rename, chmod) or a ConfigMap swap is one change and becomes
one reload and one push, never a series of half-applied states."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettleSettings:
    quiet_seconds: float = 0.05
    """A burst is over once no event came for this long."""
    longest_burst_seconds: float = 2.0
    """Events that never stop (a process rewriting a file in a loop) still get reloaded this often."""
    longest_git_seconds: float = 10.0
    """How long a running git command (its `index.lock`) may hold the reload back; a lock left behind by
    a crashed git must not stop the server from ever reloading."""


async def settle(
    wanted: asyncio.Event, settings: SettleSettings, git_running: Callable[[], bool] = lambda: False
) -> None:
    """Returns once `wanted` stayed clear for the quiet time and `git_running()` is false, or when the
    limits run out. Events that arrive while it waits are part of the reload that follows."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        wanted.clear()
        elapsed = loop.time() - started
        if elapsed >= settings.longest_burst_seconds and not git_running():
            return
        try:
            await asyncio.wait_for(wanted.wait(), timeout=settings.quiet_seconds)
            continue  # the burst goes on
        except TimeoutError:
            pass
        if not git_running():
            return
        if loop.time() - started >= settings.longest_git_seconds:
            log.warning("git still holds its index.lock after %.0f s; reloading anyway", settings.longest_git_seconds)
            return


def git_busy(roots: list[str]) -> bool:
    """Whether a git command is changing the work tree that holds a root: git creates `index.lock` before
    it touches the work tree (checkout, pull, reset, merge) and removes it when done."""
    for root in roots:
        git_dir = _git_dir(os.path.realpath(root))
        if git_dir is not None and os.path.exists(os.path.join(git_dir, "index.lock")):
            return True
    return False


def _git_dir(path: str) -> str | None:
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    while True:
        dot_git = os.path.join(folder, ".git")
        if os.path.isdir(dot_git):
            return dot_git
        if os.path.isfile(dot_git):  # a linked work tree or a submodule: "gitdir: PATH"
            try:
                with open(dot_git, encoding="utf-8") as handle:
                    first = handle.readline().strip()
            except (OSError, UnicodeDecodeError):
                return None
            if first.startswith("gitdir:"):
                return os.path.normpath(os.path.join(folder, first[len("gitdir:") :].strip()))
            return None
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
