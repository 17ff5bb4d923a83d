"""Keeps every module that the config needs fetched, verified and in the store, and tells its owner
when the state of a module changes. Fetches run concurrently, so a slow one holds up no other plugin; one
url is fetched once at a time. Failed modules are retried in the background with exponential backoff, so
the real plugin replaces its stand-in as soon as a fetch succeeds; modules pulled `Always` are pulled again
when a plugin using them changes, every repull interval and after a restart (their cached copy serving
meanwhile). A re-pull asks for the manifest first and keeps the cached module when the reference still
names the manifest it came from: an unchanged tag costs one small request, not a download. Disk work
(hashing, writing modules and the index) runs in worker threads, off the loop."""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from controlplane.model import ModuleFailed, ModuleKey, ModuleReady, ModuleStatus, RegistryCredential, WasmPlugin
from controlplane.modules.download import FetchFailed, FetchSettings
from controlplane.modules.fetch import fetch_module, is_local
from controlplane.modules.index import IndexEntry, ModuleIndex, entry_name, expired
from controlplane.modules.policy import ModuleRequest
from controlplane.modules.store import ModuleStore
from controlplane.modules.verify import ModuleRejected, verify_module
from controlplane.redaction import redact

log = logging.getLogger(__name__)


MAX_CONCURRENT_DOWNLOADS = 32
"""Downloads running at once; more wait for one of them to end (each ends by its deadline)."""


@dataclass(frozen=True)
class ResolverSettings:
    fetch: FetchSettings = FetchSettings()
    retry_first_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    repull_seconds: float = 3600.0
    """How often modules pulled `Always` are pulled again; 0: only when a plugin using them changes."""
    module_expiry_seconds: float = 24 * 3600.0
    """Modules no plugin has used for this long are deleted from the cache."""
    purge_interval_seconds: float = 3600.0
    tick_seconds: float = 0.5


@dataclass(frozen=True)
class Resolved:
    status: ModuleStatus
    manifest: str = ""
    """The OCI manifest digest the module came from, for the index."""
    unchanged: bool = False
    """The registry still names the manifest of the cached module: nothing was downloaded."""


class ModuleResolver:
    def __init__(
        self, store: ModuleStore, index: ModuleIndex, settings: ResolverSettings, on_change: Callable[[], None]
    ) -> None:
        self._store = store
        self._index = index
        self._settings = settings
        self._on_change = on_change
        self._statuses: dict[ModuleKey, ModuleStatus] = {}
        self._requests: dict[ModuleKey, ModuleRequest] = {}
        self._fetching: dict[ModuleKey, asyncio.Task[None]] = {}
        self._fetched_revision: dict[ModuleKey, str] = {}
        self._fetched_at: dict[ModuleKey, float] = {}
        self._failures: dict[ModuleKey, int] = {}
        self._retry_at: dict[ModuleKey, float] = {}
        self._url_locks: dict[str, asyncio.Lock] = {}
        self._downloads = ThreadPoolExecutor(MAX_CONCURRENT_DOWNLOADS, thread_name_prefix="module-download")
        """Threads of their own: slow registries and servers must not hold those that reloads and disk
        work run in (asyncio's default pool has only a few)."""

    @property
    def statuses(self) -> Mapping[ModuleKey, ModuleStatus]:
        return dict(self._statuses)

    def retry_times(self) -> dict[ModuleKey, float]:
        """When each failed module is tried again, in seconds since the epoch: the retry clock is monotonic,
        people read wall-clock times."""
        now, clock = time.time(), time.monotonic()
        return {key: now + max(0.0, at - clock) for key, at in self._retry_at.items()}

    def require(self, requests: Iterable[ModuleRequest]) -> None:
        """Starts fetching what is not known yet, or is due again, and forgets what is no longer needed.
        Local files are read again every time, as a commit may have replaced a module under the same path."""
        self._requests = {r.key: r for r in requests}
        for key in list(self._statuses):
            if key not in self._requests:
                self._forget(key)
        for key, request in self._requests.items():
            if key in self._fetching:
                continue
            status = self._statuses.get(key)
            changed = request.revision != self._fetched_revision.get(key)
            if (
                status is None
                or is_local(key.url)
                or (changed and (request.always or isinstance(status, ModuleFailed)))
            ):
                self._start(key, use_cache=status is None)

    async def settled(self) -> None:
        """Waits until no fetch is under way."""
        while self._fetching:
            await asyncio.gather(*self._fetching.values(), return_exceptions=True)

    async def available(self, wanted: Callable[[ModuleKey], bool] = lambda key: True) -> None:
        """Waits until every `wanted` module being fetched has a status: one served from the cache while it
        is pulled again holds nothing up."""
        while pending := [task for key, task in self._fetching.items() if key not in self._statuses and wanted(key)]:
            await asyncio.wait(pending, timeout=self._settings.tick_seconds)

    async def run(self) -> None:
        """Retries, re-pulls and purges, for as long as the server runs."""
        next_purge = time.monotonic()
        while True:
            now = time.monotonic()
            for key, request in self._requests.items():
                if key in self._fetching:
                    continue
                if key in self._retry_at and self._retry_at[key] <= now:
                    self._start(key)
                elif (
                    request.always
                    and self._settings.repull_seconds > 0
                    and now - self._fetched_at.get(key, now) >= self._settings.repull_seconds
                ):
                    self._start(key)
            if now >= next_purge:
                next_purge = now + self._settings.purge_interval_seconds
                try:
                    await self.purge(time.time())
                except Exception:  # a full disk or a race on a file must not end retries and re-pulls for good
                    log.exception("purging unused modules failed; trying again later")
            await asyncio.sleep(self._settings.tick_seconds)

    async def purge(self, now: float) -> None:
        """Forgets and deletes the modules nothing has used for the module expiry."""
        wanted = list(self._requests)
        serving = {s.sha256 for s in self._statuses.values() if isinstance(s, ModuleReady)}
        for sha256 in await asyncio.to_thread(self._purge_files, wanted, serving, now):
            log.info("deleted module %s from the cache: unused for %.0fs", sha256, self._settings.module_expiry_seconds)

    def _purge_files(self, wanted: list[ModuleKey], serving: set[str], now: float) -> list[str]:
        """Blocking: from a worker thread."""
        expiry = self._settings.module_expiry_seconds
        self._index.touch(wanted, now)
        self._index.forget(expired(self._index.entries, [entry_name(k) for k in wanted], now, expiry))
        keep = serving | {e.sha256 for e in self._index.entries.values()}
        return self._store.purge(keep, now - expiry)

    async def _serve_cached(self, request: ModuleRequest) -> bool:
        """A module pulled before (maybe before a restart) serves without asking the registry; one pulled
        `Always` serves too, while it is pulled again, as it would on a server that kept running."""
        key = request.key
        entry = self._index.get(key)
        if entry is None or is_local(key.url):
            return False
        try:
            intact = await asyncio.to_thread(self._store.intact, entry.sha256)
        except OSError as exc:
            log.warning("module %s: cannot read the cached copy (%s); fetching it", redact(key.url), exc)
            return False
        if not intact:
            return False
        if key not in self._requests:
            return True  # no plugin wants it any more
        self._set(key, ModuleReady(entry.sha256, entry.size))
        self._fetched_revision[key] = request.revision
        again = "; a cached copy: pulling it again (imagePullPolicy Always)" if request.always else ""
        log.info("module %s: serving %s from the cache%s", redact(key.url), entry.sha256, again)
        return True

    def _start(self, key: ModuleKey, use_cache: bool = False) -> None:
        self._retry_at.pop(key, None)
        self._fetching[key] = asyncio.create_task(self._fetch(self._requests[key], use_cache))

    async def _fetch(self, request: ModuleRequest, use_cache: bool) -> None:
        key = request.key
        try:
            if use_cache and await self._serve_cached(request) and (not request.always or key not in self._requests):
                return
            try:
                resolved = await self._pull(request)
            except Exception as exc:  # a bug or a full disk: a stand-in and a retry, never a plugin left hanging
                log.exception("module %s: fetch failed unexpectedly", redact(key.url))
                resolved = Resolved(ModuleFailed(f"internal error: {type(exc).__name__}: {exc}"))
            status = resolved.status
            if resolved.unchanged:
                log.info(
                    "module %s: unchanged in the registry (%s); keeping the cached copy",
                    redact(key.url),
                    resolved.manifest,
                )
        finally:
            self._fetching.pop(key, None)
        if key not in self._requests:
            return
        self._fetched_revision[key] = request.revision
        previous = self._statuses.get(key)
        if isinstance(status, ModuleFailed):
            delay = self._schedule_retry(key)
            if isinstance(previous, ModuleReady) and not is_local(key.url):
                log.error(
                    "module %s: pulling again failed (%s); still serving %s; trying again in %.1fs",
                    redact(key.url),
                    status.reason,
                    previous.sha256,
                    delay,
                )
                return
            log.error("module %s unavailable: %s; trying again in %.1fs", redact(key.url), status.reason, delay)
        else:
            if isinstance(previous, ModuleFailed):
                log.info("module %s is available now: the plugin replaces its stand-in", redact(key.url))
            self._failures.pop(key, None)
            self._fetched_at[key] = time.monotonic()
        self._set(key, status)
        current = self._requests.get(key)
        if current is not None and current.revision != request.revision and current.always:
            self._start(key)  # the plugin changed while its module was being pulled

    async def _pull(self, request: ModuleRequest) -> Resolved:
        key = request.key
        async with self._url_locks.setdefault(key.url, asyncio.Lock()):
            cached = self._index.get(key)
            resolved = await pull_module(
                key, self._store, self._settings.fetch, request.credentials, cached, self._downloads
            )
        status = resolved.status
        if isinstance(status, ModuleReady):
            await asyncio.to_thread(self._index.record, key, status.sha256, status.size, time.time(), resolved.manifest)
        return resolved

    def _schedule_retry(self, key: ModuleKey) -> float:
        """Seconds until the next try: exponential backoff with jitter."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self._settings.retry_max_seconds, self._settings.retry_first_seconds * 2 ** (failures - 1))
        delay *= 0.75 + random.random() / 2
        self._retry_at[key] = time.monotonic() + delay
        return delay

    def _set(self, key: ModuleKey, status: ModuleStatus) -> None:
        if self._statuses.get(key) != status:
            self._statuses[key] = status
            self._on_change()

    def _forget(self, key: ModuleKey) -> None:
        for state in (self._statuses, self._fetched_revision, self._fetched_at, self._failures, self._retry_at):
            state.pop(key, None)


async def resolve_module(
    key: ModuleKey, store: ModuleStore, settings: FetchSettings, credentials: tuple[RegistryCredential, ...] = ()
) -> ModuleStatus:
    """Fetches and verifies one module into the store; every failure becomes a ModuleFailed."""
    return (await pull_module(key, store, settings, credentials)).status


async def pull_module(
    key: ModuleKey,
    store: ModuleStore,
    settings: FetchSettings,
    credentials: tuple[RegistryCredential, ...] = (),
    cached: IndexEntry | None = None,
    downloads: Executor | None = None,
) -> Resolved:
    """As `resolve_module`; `cached` is what the index knows of this key. When the registry still resolves
    it to the manifest that module came from and the store holds the module intact, the module stays: it
    was verified under this same key when it was stored. `downloads`: as for `fetch_module`."""
    if cached is not None and not await _reusable(cached, store):
        cached = None
    try:
        fetched = await fetch_module(key.url, settings, credentials, cached.manifest if cached else "", downloads)
        if fetched is None:
            assert cached is not None  # only a known manifest is found unchanged
            return Resolved(ModuleReady(cached.sha256, cached.size), cached.manifest, unchanged=True)
        sha256 = await asyncio.to_thread(
            verify_module, fetched.content, key.sha256, settings.max_bytes, fetched.digests
        )
    except (FetchFailed, ModuleRejected) as exc:
        return Resolved(ModuleFailed(str(exc)))
    await asyncio.to_thread(store.put, fetched.content)
    return Resolved(ModuleReady(sha256, len(fetched.content)), fetched.manifest)


async def _reusable(cached: IndexEntry, store: ModuleStore) -> bool:
    """A damaged copy must be downloaded again even when the registry has not changed."""
    return bool(cached.manifest) and await asyncio.to_thread(store.intact, cached.sha256)


def module_views(
    plugins: Iterable[WasmPlugin],
    statuses: Mapping[ModuleKey, ModuleStatus],
    retry_times: Mapping[ModuleKey, float] | None = None,
    now: float = 0.0,
) -> list[dict[str, Any]]:
    """One entry per module key, for the status view: plugins with the same url but another sha256 or pull
    secret are other modules, so the url alone does not name one. The url is shown redacted. With
    `retry_times` (from `ModuleResolver.retry_times`, at `now`), a failed module shows when it is tried again."""
    users: dict[ModuleKey, list[str]] = {}
    for plugin in plugins:
        users.setdefault(plugin.module, []).append(f"{plugin.namespace}/{plugin.name}")
    views = []
    for key, names in sorted(users.items(), key=_order):
        view = _module_view(key, sorted(names), statuses.get(key))
        if view["state"] == "failed" and retry_times is not None:
            view.update(_retry_view(retry_times.get(key), now))
        views.append(view)
    return views


def _retry_view(retry_at: float | None, now: float) -> dict[str, Any]:
    """No retry time: a retry is under way."""
    if retry_at is None:
        return {"next_retry_at": None, "next_retry_in_seconds": None}
    at = datetime.datetime.fromtimestamp(retry_at, datetime.UTC).isoformat(timespec="seconds")
    return {"next_retry_at": at, "next_retry_in_seconds": round(max(0.0, retry_at - now), 1)}


def _order(item: tuple[ModuleKey, list[str]]) -> tuple[str, str, str]:
    key = item[0]
    return redact(key.url), key.sha256, key.pull_secret


def _module_view(key: ModuleKey, plugins: list[str], status: ModuleStatus | None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "url": redact(key.url),
        "sha256": key.sha256,
        "pull_secret": key.pull_secret,
        "plugins": plugins,
    }
    if isinstance(status, ModuleReady):
        return {**view, "state": "ready", "module_sha256": status.sha256, "size": status.size}
    if isinstance(status, ModuleFailed):
        return {**view, "state": "failed", "reason": status.reason}
    return {**view, "state": "fetching"}
