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
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from controlplane.model import Config, ModuleFailed, ModuleKey, ModuleReady, ModuleStatus, RegistryCredential
from controlplane.modules.download import FetchFailed, FetchSettings
from controlplane.modules.fetch import fetch_module, is_local
from controlplane.modules.index import IndexEntry, ModuleIndex, entry_name, expired
from controlplane.modules.policy import ModuleRequest, start_waits_for
from controlplane.modules.signatures import check_signatures
from controlplane.modules.store import ModuleStore, StoreFailed
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


@dataclass
class ModuleRecord:
    """Everything the resolver knows of one module key, kept in one place so that it goes in one piece:
    dropped once no plugin wants the module and no fetch of it is under way. The status views read it."""

    key: ModuleKey
    request: ModuleRequest | None
    """What the config asks for; None once no plugin wants the module (while its last fetch ends)."""
    url_lock: asyncio.Lock
    """Shared by the records of one url, which is fetched once at a time."""
    status: ModuleStatus | None = None
    """None while the first fetch is under way."""
    fetch: asyncio.Task[None] | None = None
    """The fetch under way, if any."""
    fetched_revision: str = ""
    """The request revision the last fetch answered: a new one pulls `Always` modules and failed ones again."""
    fetched_at: float | None = None
    """When the module last arrived, on the monotonic clock: re-pulls of `Always` modules count from it."""
    failures: int = 0
    """Failed fetches since the last good one: the retry backoff grows with them."""
    retry_at: float | None = None
    """When a failed module is tried again, on the monotonic clock."""

    def unwanted(self) -> None:
        """No plugin wants the module any more: what was learnt of it goes; the fetch under way, seeing no
        request when it ends, drops the record (unless a plugin wants the module again by then)."""
        self.request, self.status, self.fetched_revision = None, None, ""
        self.fetched_at, self.failures, self.retry_at = None, 0, None


class ModuleResolver:
    def __init__(
        self,
        store: ModuleStore,
        index: ModuleIndex,
        settings: ResolverSettings,
        on_change: Callable[[], None],
        on_fetched: Callable[[str], None] = lambda result: None,
    ) -> None:
        """`on_fetched(result)` after each fetch: "ready", "unchanged" (the registry still names the cached
        module), "cached" (served from the cache without asking) or "failed"."""
        self._store = store
        self._index = index
        self._settings = settings
        self._on_change = on_change
        self._on_fetched = on_fetched
        self._records: dict[ModuleKey, ModuleRecord] = {}
        self._downloads = ThreadPoolExecutor(MAX_CONCURRENT_DOWNLOADS, thread_name_prefix="module-download")
        """Threads of their own: slow registries and servers must not hold those that reloads and disk
        work run in (asyncio's default pool has only a few)."""

    @property
    def statuses(self) -> Mapping[ModuleKey, ModuleStatus]:
        """The status of every wanted module that has one; a module not in it is still being fetched."""
        return {k: r.status for k, r in self._records.items() if r.request is not None and r.status is not None}

    def records(self) -> Mapping[ModuleKey, ModuleRecord]:
        """Every module the resolver keeps state for, for the status views: read them, do not change them."""
        return dict(self._records)

    def require(self, requests: Iterable[ModuleRequest]) -> None:
        """Starts fetching what is not known yet, or is due again, and forgets what is no longer needed.
        Local files are read again every time, as a commit may have replaced a module under the same path."""
        wanted = {r.key: r for r in requests}
        for key in list(self._records):
            if key not in wanted:
                self._forget(key)
        for key, request in wanted.items():
            record = self._records.get(key)
            if record is None:
                record = self._records[key] = ModuleRecord(key, request, self._lock_for(key.url))
            record.request = request
            if record.fetch is not None:
                continue
            changed = request.revision != record.fetched_revision
            if (
                record.status is None
                or is_local(key.url)
                or (changed and (request.always or isinstance(record.status, ModuleFailed)))
            ):
                self._start(record, use_cache=record.status is None)
        self._release_unserved()

    async def settled(self) -> None:
        """Waits until no fetch is under way."""
        while fetches := [r.fetch for r in self._records.values() if r.fetch is not None]:
            await asyncio.gather(*fetches, return_exceptions=True)

    async def available(self, wanted: Callable[[ModuleKey], bool] = lambda key: True) -> None:
        """Waits until every `wanted` module being fetched has a status: one served from the cache while it
        is pulled again holds nothing up."""
        while pending := [
            r.fetch for k, r in self._records.items() if r.fetch is not None and r.status is None and wanted(k)
        ]:
            await asyncio.wait(pending, timeout=self._settings.tick_seconds)

    async def first_push_ready(self, config: Config, timeout: float) -> bool:
        """Waits until every module a starting server holds its first push for (`start_waits_for`) has a
        status; False when `timeout` seconds pass first."""
        waits_for = start_waits_for(config)
        try:
            await asyncio.wait_for(self.available(waits_for.__contains__), timeout)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Retries, re-pulls and purges, for as long as the server runs."""
        next_purge = time.monotonic()
        while True:
            now = time.monotonic()
            for record in list(self._records.values()):
                request = record.request
                if request is None or record.fetch is not None:
                    continue
                if record.retry_at is not None and record.retry_at <= now:
                    self._start(record)
                elif (
                    request.always
                    and self._settings.repull_seconds > 0
                    and record.fetched_at is not None
                    and now - record.fetched_at >= self._settings.repull_seconds
                ):
                    self._start(record)
            if now >= next_purge:
                next_purge = now + self._settings.purge_interval_seconds
                try:
                    await self.purge(time.time())
                except Exception:  # a full disk or a race on a file must not end retries and re-pulls for good
                    log.exception("purging unused modules failed; trying again later")
            await asyncio.sleep(self._settings.tick_seconds)

    async def purge(self, now: float) -> None:
        """Forgets and deletes the modules nothing has used for the module expiry."""
        wanted = [k for k, r in self._records.items() if r.request is not None]
        serving = {s.sha256 for s in self.statuses.values() if isinstance(s, ModuleReady)}
        for sha256 in await asyncio.to_thread(self._purge_files, wanted, serving, now):
            log.info("deleted module %s from the cache: unused for %.0fs", sha256, self._settings.module_expiry_seconds)

    def _purge_files(self, wanted: list[ModuleKey], serving: set[str], now: float) -> list[str]:
        """Blocking: from a worker thread."""
        expiry = self._settings.module_expiry_seconds
        self._index.touch(wanted, now)
        self._index.forget(expired(self._index.entries, [entry_name(k) for k in wanted], now, expiry))
        keep = serving | {e.sha256 for e in self._index.entries.values()}
        return self._store.purge(keep, now - expiry)

    def _lock_for(self, url: str) -> asyncio.Lock:
        same_url = next((r for r in self._records.values() if r.key.url == url), None)
        return same_url.url_lock if same_url is not None else asyncio.Lock()

    async def _serve_cached(self, record: ModuleRecord, request: ModuleRequest) -> bool:
        """A module pulled before (maybe before a restart) serves without asking the registry; one pulled
        `Always` serves too, while it is pulled again, as it would on a server that kept running."""
        key = record.key
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
        if record.request is None:
            return True  # no plugin wants it any more
        self._set(record, ModuleReady(entry.sha256, entry.size))
        record.fetched_revision = request.revision
        self._on_fetched("cached")
        again = "; a cached copy: pulling it again (imagePullPolicy Always)" if request.always else ""
        log.info("module %s: serving %s from the cache%s", redact(key.url), entry.sha256, again)
        return True

    def _start(self, record: ModuleRecord, use_cache: bool = False) -> None:
        assert record.request is not None
        record.retry_at = None
        record.fetch = asyncio.create_task(self._fetch(record, record.request, use_cache))

    async def _fetch(self, record: ModuleRecord, request: ModuleRequest, use_cache: bool) -> None:
        key = record.key
        try:
            if use_cache and await self._serve_cached(record, request) and (not request.always or not record.request):
                return
            try:
                resolved = await self._pull(record, request)
            except Exception as exc:  # a bug or a full disk: a stand-in and a retry, never a plugin left hanging
                log.exception("module %s: fetch failed unexpectedly", redact(key.url))
                resolved = Resolved(ModuleFailed(f"internal error: {type(exc).__name__}: {exc}"))
            status = resolved.status
            self._on_fetched(
                "failed" if isinstance(status, ModuleFailed) else "unchanged" if resolved.unchanged else "ready"
            )
            if resolved.unchanged:
                log.info(
                    "module %s: unchanged in the registry (%s); keeping the cached copy",
                    redact(key.url),
                    resolved.manifest,
                )
        finally:
            record.fetch = None
            if record.request is None and self._records.get(key) is record:
                del self._records[key]  # nobody wants it any more: nothing of it is kept
        if record.request is None:
            self._release_unserved()
            return
        record.fetched_revision = request.revision
        previous = record.status
        if isinstance(status, ModuleFailed):
            delay = self._schedule_retry(record)
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
            record.failures = 0
            record.fetched_at = time.monotonic()
        self._set(record, status)
        current = record.request
        if current.revision != request.revision and current.always:
            self._start(record)  # the plugin changed while its module was being pulled

    async def _pull(self, record: ModuleRecord, request: ModuleRequest) -> Resolved:
        key = record.key
        async with record.url_lock:
            cached = self._index.get(key)
            resolved = await pull_module(
                key, self._store, self._settings.fetch, request.credentials, cached, self._downloads
            )
        status = resolved.status
        if isinstance(status, ModuleReady):
            await asyncio.to_thread(self._index.record, key, status.sha256, status.size, time.time(), resolved.manifest)
        return resolved

    def _schedule_retry(self, record: ModuleRecord) -> float:
        """Seconds until the next try: exponential backoff with jitter."""
        record.failures += 1
        delay = min(self._settings.retry_max_seconds, self._settings.retry_first_seconds * 2 ** (record.failures - 1))
        delay *= 0.75 + random.random() / 2
        record.retry_at = time.monotonic() + delay
        return delay

    def _set(self, record: ModuleRecord, status: ModuleStatus) -> None:
        if record.status != status:
            record.status = status
            self._release_unserved()
            self._on_change()

    def _release_unserved(self) -> None:
        """Drops from memory the module bytes no wanted module's status names any more (proxies are sent
        modules inside their configs, from memory)."""
        self._store.keep_only(s.sha256 for s in self.statuses.values() if isinstance(s, ModuleReady))

    def _forget(self, key: ModuleKey) -> None:
        """Drops the record; one whose fetch is under way stays, unwanted, until the fetch ends."""
        record = self._records[key]
        if record.fetch is None:
            del self._records[key]
        else:
            record.unwanted()


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
        # Signatures are fetched too: on the download threads, like the module.
        await asyncio.get_running_loop().run_in_executor(
            downloads, check_signatures, key, fetched, settings, credentials
        )
    except (FetchFailed, ModuleRejected) as exc:
        return Resolved(ModuleFailed(str(exc)))
    try:
        await asyncio.to_thread(store.put, fetched.content)
    except StoreFailed as exc:
        return Resolved(ModuleFailed(str(exc)))
    return Resolved(ModuleReady(sha256, len(fetched.content)), fetched.manifest)


async def _reusable(cached: IndexEntry, store: ModuleStore) -> bool:
    """A damaged copy must be downloaded again even when the registry has not changed."""
    return bool(cached.manifest) and await asyncio.to_thread(store.intact, cached.sha256)
