"""Follows the config directories for `serve`: reads them again after each burst of changes (and every
resync interval), off the event loop, remembers which file serves each document across restarts, and logs
each error and warning once, when it first appears."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from controlplane.errors import ConfigError
from controlplane.source.directory import LoadedDirectory, load_directory
from controlplane.source.serving_record import read_record, record_of, write_record
from controlplane.source.settle import SettleSettings, git_busy, settle
from controlplane.source.watcher import WRITE_GRACE_SECONDS, DirectoryWatcher

log = logging.getLogger(__name__)


class DirectoryFollower:
    def __init__(
        self, config_dirs: tuple[str, ...], cache_dir: str, settle_settings: SettleSettings, resync_seconds: float
    ) -> None:
        self._roots = list(config_dirs)
        self._cache_dir = cache_dir
        self._settle = settle_settings
        self._resync_seconds = resync_seconds
        self.loaded = LoadedDirectory()
        self._wanted = asyncio.Event()
        self._lock = asyncio.Lock()
        self._reported: set[ConfigError] = set()
        self._serving_record = read_record(cache_dir)
        self._watcher = DirectoryWatcher(self._roots, self._wanted.set)
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="config-load")
        """A thread of its own, so that no module download can hold a load up."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watcher.start(loop)

    def stop(self) -> None:
        self._watcher.stop()
        self._loader.shutdown(wait=False)

    async def load(self) -> LoadedDirectory:
        """Reads the directories again, starting from the previous load: unchanged files are not parsed again,
        and a file that became invalid keeps serving its last good documents."""
        async with self._lock:  # each load starts from the one before it
            # Watch where the roots lead now (a symlink swap or a replaced folder moves them) before reading.
            self._watcher.refresh()
            # Reading and parsing every changed file can take long: in a worker, so that no xDS stream stalls.
            self.loaded = await asyncio.get_running_loop().run_in_executor(
                self._loader, self._load, self.loaded, self._watcher.writes_in_progress()
            )
        self._report(self.loaded.errors, self.loaded.warnings)
        return self.loaded

    async def follow(self, reload: Callable[[], Awaitable[None]]) -> None:
        """Calls `reload` once per burst of changes, for as long as the server runs."""
        while True:
            # The periodic full rescan catches whatever events were dropped; a file held back because it
            # was open for writing is looked at again once its grace runs out.
            timeout = WRITE_GRACE_SECONDS if self.loaded.being_written else self._resync_seconds
            try:
                await asyncio.wait_for(self._wanted.wait(), timeout=timeout)
            except TimeoutError:
                pass
            await settle(self._wanted, self._settle, lambda: git_busy(self._roots))
            try:
                await reload()
            except Exception:  # a bug in one reload must not stop the server from taking the next
                log.exception("reload failed; still serving the previous config")

    def _load(self, previous: LoadedDirectory, being_written: frozenset[str]) -> LoadedDirectory:
        """On a worker thread: touches no state of the event loop's."""
        loaded = load_directory(self._roots, previous, being_written, self._serving_record)
        record = record_of(loaded.served)
        if record != self._serving_record:
            try:
                write_record(self._cache_dir, record)
            except OSError as exc:
                log.warning("cannot record which files serve: %s", exc)
            self._serving_record = record
        return loaded

    def _report(self, errors: tuple[ConfigError, ...], warnings: tuple[ConfigError, ...]) -> None:
        for error in sorted(set(errors) - self._reported):
            log.error("%s", error)
        for warning in sorted(set(warnings) - self._reported):
            log.warning("%s", warning)
        self._reported = set(errors) | set(warnings)
