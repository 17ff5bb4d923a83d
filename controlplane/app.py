"""Wires the pipeline together for `controlplane serve`: directory → model → modules → translation →
snapshots → ADS, with the watcher and the HTTP port at the edges."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from controlplane.admin import config_view, metrics_text, proxies_view
from controlplane.errors import ConfigError
from controlplane.http_server import HttpServer
from controlplane.model import FailStrategy, ModuleKey, ModuleReady, ModuleStatus, PluginType, ProxyClass
from controlplane.modules.index import ModuleIndex
from controlplane.modules.policy import module_requests
from controlplane.modules.resolver import ModuleResolver, ResolverSettings
from controlplane.modules.store import ModuleStore
from controlplane.node import proxy_class
from controlplane.source.directory import LoadedDirectory, load_directory
from controlplane.source.serving_record import read_record, record_of, write_record
from controlplane.source.settle import SettleSettings, git_busy, settle
from controlplane.source.watcher import WRITE_GRACE_SECONDS, DirectoryWatcher
from controlplane.translate.attachment import attachment_report
from controlplane.translate.resources import TranslateSettings, ecds_name, host_for_url, translate
from controlplane.translate.selection import select_plugins
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import DiscoveryServer
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER, Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    config_dirs: tuple[str, ...]
    cache_dir: str
    host: str = "127.0.0.1"
    xds_port: int = 18000
    http_port: int = 18001
    translate: TranslateSettings = TranslateSettings()
    modules: ResolverSettings = ResolverSettings()
    settle: SettleSettings = SettleSettings()
    resync_seconds: float = 30.0
    startup_fetch_seconds: float = 30.0


@dataclass
class ControlPlane:
    settings: ServeSettings
    loaded: LoadedDirectory = field(default_factory=LoadedDirectory)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.cache: SnapshotCache[ProxyClass] = SnapshotCache()
        self.cache.on_first_watch = self._build_first
        self.cache.on_last_unwatch = self._forget_class
        self.store = ModuleStore(self.settings.cache_dir)
        self.modules = ModuleResolver(
            self.store, ModuleIndex(self.settings.cache_dir), self.settings.modules, self._rebuild
        )
        self.xds = DiscoveryServer(self.cache, proxy_class, self.ready)
        self._reload_wanted = asyncio.Event()
        self._reported: set[ConfigError] = set()
        self._reload_lock = asyncio.Lock()
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="config-load")
        self._serving_record = read_record(self.settings.cache_dir)
        self._tasks: list[asyncio.Task[None]] = []
        self._inline_modules: dict[str, bytes] = {}
        self._standalone_plugins: dict[ProxyClass, dict[str, PluginType]] = {}
        """Per proxy class on the extension-config service alone, every plugin it was sent: one that goes away
        gets a pass-through config, as its listener keeps naming it. Forgotten when the class's last stream
        ends, so that made-up labels cannot grow it."""
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._watcher = DirectoryWatcher(list(self.settings.config_dirs), self._reload_wanted.set)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._grpc = grpc.aio.server()
        self.xds.register(self._grpc)
        self.xds_port = self._grpc.add_insecure_port(f"{host_for_url(self.settings.host)}:{self.settings.xds_port}")
        self._http = HttpServer(
            self.settings.host,
            self.settings.http_port,
            self.store,
            loop,
            self.ready.is_set,
            {
                "/debug/config": lambda: config_view(
                    self.loaded,
                    self.modules.statuses,
                    self.modules.retry_times(),
                    time.time(),
                    attachment_report(
                        self.loaded.config, self.cache.watched_keys(), self.settings.translate.root_namespace
                    ),
                ),
                "/debug/proxies": lambda: proxies_view(self.xds.connections.values()),
                "/metrics": lambda: metrics_text(self.ready.is_set(), self.loaded, self.modules.statuses, self.xds),
            },
        )
        self.http_port = self._http.port
        self._http.start()
        await self._grpc.start()
        self._watcher.start(loop)
        await self.reload()
        # Proxies get nothing until the directory is loaded and its modules settled, so that none is
        # ever sent a partial config.
        try:
            await asyncio.wait_for(self.modules.available(self._holds_start), self.settings.startup_fetch_seconds)
        except TimeoutError:
            # Past this, a module still on its way only holds back the listeners that use it: Envoy warms
            # them until its config arrives.
            log.warning("modules still being fetched after %.0fs; serving", self.settings.startup_fetch_seconds)
        self.ready.set()
        for work in (self._reload_loop(), self.modules.run()):
            task = asyncio.create_task(work)
            task.add_done_callback(_report_end)
            self._tasks.append(task)
        log.info(
            "serving xDS on %s:%d and HTTP on %s:%d",
            self.settings.host,
            self.xds_port,
            self.settings.host,
            self.http_port,
        )

    def _holds_start(self, module: ModuleKey) -> bool:
        """A module only FAIL_OPEN plugins use holds nothing up: they serve their allow-all stand-in until
        it arrives."""
        return any(p.module == module and p.fail_strategy != FailStrategy.FAIL_OPEN for p in self.loaded.config.plugins)

    async def stop(self) -> None:
        self._watcher.stop()
        for task in self._tasks:
            task.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=1)
        if self._http is not None:
            self._http.stop()
        self._loader.shutdown(wait=False)

    async def reload(self) -> None:
        async with self._reload_lock:  # each load starts from the one before it
            # Watch where the roots lead now (a symlink swap or a replaced folder moves them) before reading.
            self._watcher.refresh()
            # Reading and parsing every changed file can take long: in a worker, so that no xDS stream stalls;
            # one of its own, so that no module download can hold it up.
            self.loaded = await asyncio.get_running_loop().run_in_executor(
                self._loader, self._load, self.loaded, self._watcher.writes_in_progress()
            )
        self._report(self.loaded.errors, self.loaded.warnings)
        self.modules.require(module_requests(self.loaded.config))
        self._rebuild()

    def _load(self, previous: LoadedDirectory, being_written: frozenset[str]) -> LoadedDirectory:
        """On a worker thread: touches no state of the event loop's."""
        loaded = load_directory(list(self.settings.config_dirs), previous, being_written, self._serving_record)
        record = record_of(loaded.served)
        if record != self._serving_record:
            try:
                write_record(self.settings.cache_dir, record)
            except OSError as exc:
                log.warning("cannot record which files serve: %s", exc)
            self._serving_record = record
        return loaded

    def _report(self, errors: tuple[ConfigError, ...], warnings: tuple[ConfigError, ...]) -> None:
        """Each error and warning is logged once, when it first appears."""
        for error in sorted(set(errors) - self._reported):
            log.error("%s", error)
        for warning in sorted(set(warnings) - self._reported):
            log.warning("%s", warning)
        self._reported = set(errors) | set(warnings)

    def snapshot_for(self, proxy: ProxyClass) -> Snapshot:
        statuses = self.modules.statuses
        inline: dict[str, bytes] = {}
        retired: dict[str, PluginType] = {}
        if proxy.standalone_ecds:
            plugins = select_plugins(self.loaded.config, proxy, self.settings.translate.root_namespace)
            if self.settings.translate.module_delivery == "remote":
                inline = self._module_bytes(statuses.get(p.module) for p in plugins)
            sent = self._standalone_plugins.setdefault(proxy, {})
            current = {ecds_name(p) for p in plugins}
            retired = {name: plugin_type for name, plugin_type in sent.items() if name not in current}
            sent.update({ecds_name(p): p.type for p in plugins})
        resources = translate(
            self.loaded.config, proxy, statuses, self.settings.translate, inline_modules=inline, retired=retired
        )
        return Snapshot.of(
            {CLUSTER: resources.clusters, LISTENER: resources.listeners, EXTENSION_CONFIG: resources.extension_configs}
        )

    def _module_bytes(self, statuses: Iterable[ModuleStatus | None]) -> dict[str, bytes]:
        """The verified modules, for proxies on the extension-config service alone: each read from the store
        once (on the loop: Wasm modules are small next to what the store allows), and kept while in use."""
        wanted = {s.sha256 for s in statuses if isinstance(s, ModuleReady)}
        in_use = {s.sha256 for s in self.modules.statuses.values() if isinstance(s, ModuleReady)}
        for sha256 in set(self._inline_modules) - in_use:
            del self._inline_modules[sha256]
        for sha256 in wanted - set(self._inline_modules):
            self._inline_modules[sha256] = self.store.path(sha256).read_bytes()
        return {sha256: self._inline_modules[sha256] for sha256 in wanted}

    def _forget_class(self, proxy: ProxyClass) -> None:
        self._standalone_plugins.pop(proxy, None)

    def _build_first(self, proxy: ProxyClass) -> None:
        self.cache.set(proxy, self.snapshot_for(proxy))

    def _rebuild(self) -> None:
        for key in self.cache.watched_keys():
            if self.cache.set(key, self.snapshot_for(key)):
                log.info("new config for %s", key)

    async def _reload_loop(self) -> None:
        roots = list(self.settings.config_dirs)
        while True:
            # The periodic full rescan catches whatever events were dropped; a file held back because it
            # was open for writing is looked at again once its grace runs out.
            timeout = WRITE_GRACE_SECONDS if self.loaded.being_written else self.settings.resync_seconds
            try:
                await asyncio.wait_for(self._reload_wanted.wait(), timeout=timeout)
            except TimeoutError:
                pass
            await settle(self._reload_wanted, self.settings.settle, lambda: git_busy(roots))
            try:
                await self.reload()
            except Exception:  # a bug in one reload must not stop the server from taking the next
                log.exception("reload failed; still serving the previous config")


def _report_end(task: asyncio.Task[None]) -> None:
    """Background tasks run for the server's life: one that ends otherwise is a bug to be seen in the log."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_coro(), exc_info=task.exception())


async def serve(settings: ServeSettings) -> None:
    plane = ControlPlane(settings)
    await plane.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await plane.stop()
