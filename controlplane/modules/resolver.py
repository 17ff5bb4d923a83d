"""Keeps every module that the config needs fetched, verified and in the store, and tells its owner
when the state of a module changes. Each module key is fetched once at a time; fetches run
concurrently, so a slow one holds up no other plugin."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from controlplane.model import ModuleFailed, ModuleKey, ModuleReady, ModuleStatus
from controlplane.modules.fetch import FetchFailed, FetchSettings, fetch_module
from controlplane.modules.store import ModuleStore
from controlplane.modules.verify import ModuleRejected, verify_module

log = logging.getLogger(__name__)


class ModuleResolver:
    def __init__(self, store: ModuleStore, settings: FetchSettings, on_change: Callable[[], None]) -> None:
        self._store = store
        self._settings = settings
        self._on_change = on_change
        self._statuses: dict[ModuleKey, ModuleStatus] = {}
        self._fetching: dict[ModuleKey, asyncio.Task[None]] = {}
        self._wanted: set[ModuleKey] = set()

    @property
    def statuses(self) -> Mapping[ModuleKey, ModuleStatus]:
        return dict(self._statuses)

    def require(self, keys: Iterable[ModuleKey]) -> None:
        """Starts fetching what is not known yet, and forgets what is no longer needed. Local files are
        read again every time, as a commit may have replaced a module under the same path."""
        wanted = self._wanted = set(keys)
        for key in list(self._statuses):
            if key not in wanted:
                del self._statuses[key]
        for key in wanted:
            if key in self._fetching:
                continue
            if key not in self._statuses or key.url.startswith("file://"):
                self._fetching[key] = asyncio.create_task(self._fetch(key))

    async def settled(self) -> None:
        """Waits until no fetch is under way."""
        while self._fetching:
            await asyncio.gather(*self._fetching.values(), return_exceptions=True)

    async def _fetch(self, key: ModuleKey) -> None:
        try:
            status = await resolve_module(key, self._store, self._settings)
        finally:
            self._fetching.pop(key, None)
        if key not in self._wanted:
            return
        if isinstance(status, ModuleFailed):
            log.error("module %s unavailable: %s", key.url, status.reason)
        if self._statuses.get(key) != status:
            self._statuses[key] = status
            self._on_change()


async def resolve_module(key: ModuleKey, store: ModuleStore, settings: FetchSettings) -> ModuleStatus:
    """Fetches and verifies one module into the store; every failure becomes a ModuleFailed."""
    try:
        content = await fetch_module(key.url, settings)
        sha256 = await asyncio.to_thread(verify_module, content, key.sha256, settings.max_bytes)
    except (FetchFailed, ModuleRejected) as exc:
        return ModuleFailed(str(exc))
    store.put(content)
    return ModuleReady(sha256, len(content))
