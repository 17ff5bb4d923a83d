"""Wires the pipeline together for `controlplane serve`: directory → model → modules → translation →
snapshots → ADS, with the watcher and the HTTP port at the edges."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from controlplane.admin import (
    AdminRoutes,
    Metrics,
    StateCollector,
    built,
    config_view,
    proxies_view,
    serving_summary,
)
from controlplane.convergence import Convergence
from controlplane.errors import ConfigError
from controlplane.http_server import HttpLimits, HttpServer, Request, module_routes
from controlplane.identity import auth_context_uris, certificate_namespace, may_fetch_module, namespace_refusal
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
from controlplane.tls import ServerTls, TlsFiles
from controlplane.translate.attachment import attachment_report
from controlplane.translate.resources import TranslateSettings, ecds_name, host_for_url, translate
from controlplane.translate.selection import select_plugins
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.connection import Connection
from controlplane.xds.server import DiscoveryServer, StreamEvents
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER, Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    config_dirs: tuple[str, ...]
    cache_dir: str
    host: str = "127.0.0.1"
    xds_port: int = 18000
    http_port: int = 18001
    admin_host: str = "127.0.0.1"
    admin_port: int = 18002
    tls: TlsFiles | None = None
    """The xDS and module ports speak TLS with these; with a client CA, mTLS and proxy identities."""
    trust_domain: str = "cluster.local"
    http_limits: HttpLimits = HttpLimits()
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
        self.metrics = Metrics()
        self.modules = ModuleResolver(
            self.store,
            ModuleIndex(self.settings.cache_dir),
            self.settings.modules,
            self._rebuild,
            lambda result: self.metrics.module_fetches.labels(result).inc(),
        )
        self.convergence = Convergence(self.metrics.change_to_ack_seconds.observe)
        self.xds = DiscoveryServer(self.cache, proxy_class, self.ready, _Events(self))
        self.metrics.registry.register(
            StateCollector(self.ready.is_set, lambda: self.loaded, lambda: self.modules.statuses, self.xds)
        )
        self._reload_wanted = asyncio.Event()
        self._reported: set[ConfigError] = set()
        self._reload_lock = asyncio.Lock()
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="config-load")
        self._serving_record = read_record(self.settings.cache_dir)
        self._tasks: list[asyncio.Task[None]] = []
        self._last_summary = ""
        self._inline_modules: dict[str, bytes] = {}
        self._standalone_plugins: dict[ProxyClass, dict[str, PluginType]] = {}
        """Per proxy class on the extension-config service alone, every plugin it was sent: one that goes away
        gets a pass-through config, as its listener keeps naming it. Forgotten when the class's last stream
        ends, so that made-up labels cannot grow it."""
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._admin: HttpServer | None = None
        self._admin_routes: AdminRoutes | None = None
        self._watcher = DirectoryWatcher(list(self.settings.config_dirs), self._file_changed)
        self._tls = ServerTls(self.settings.tls) if self.settings.tls else None

    def _file_changed(self) -> None:
        self.convergence.changed()
        self._reload_wanted.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._grpc = grpc.aio.server()
        self.xds.register(self._grpc)
        xds_address = f"{host_for_url(self.settings.host)}:{self.settings.xds_port}"
        if self._tls is not None:
            self.xds_port = self._grpc.add_secure_port(xds_address, self._tls.grpc_credentials())
        else:
            self.xds_port = self._grpc.add_insecure_port(xds_address)
        self._http = HttpServer(
            "module",
            self.settings.host,
            self.settings.http_port,
            module_routes(self.store, self._may_fetch),
            self.settings.http_limits,
            self._tls,
        )
        self._admin_routes = AdminRoutes(
            self.ready.is_set,
            self.metrics,
            {
                "/debug/config": self._config_view,
                "/debug/proxies": lambda: built(proxies_view(self.xds.connections.values())),
            },
        )
        self._admin = HttpServer(
            "admin", self.settings.admin_host, self.settings.admin_port, self._admin_routes, self.settings.http_limits
        )
        await self._http.start()
        await self._admin.start()
        self.http_port, self.admin_port = self._http.port, self._admin.port
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
        self._log_summary()
        for work in (self._reload_loop(), self.modules.run()):
            task = asyncio.create_task(work)
            task.add_done_callback(_report_end)
            self._tasks.append(task)
        log.info(
            "serving xDS on %s:%d%s, modules on %s:%d, admin on %s:%d",
            self.settings.host,
            self.xds_port,
            (" with mTLS" if self._tls.mutual else " with TLS") if self._tls else "",
            self.settings.host,
            self.http_port,
            self.settings.admin_host,
            self.admin_port,
        )

    def _holds_start(self, module: ModuleKey) -> bool:
        """A module only FAIL_OPEN plugins use holds nothing up: they serve their allow-all stand-in until
        it arrives."""
        return any(p.module == module and p.fail_strategy != FailStrategy.FAIL_OPEN for p in self.loaded.config.plugins)

    async def stop(self) -> None:
        """Stops accepting, then closes the streams: each Envoy keeps its config and reconnects at once (to
        another replica where there is one)."""
        self._watcher.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._grpc is not None:
            await self._grpc.stop(grace=1)
        for http in (self._http, self._admin):
            if http is not None:
                await http.stop()
        if self._admin_routes is not None:
            self._admin_routes.close()
        self._loader.shutdown(wait=False)

    def _config_view(self) -> Callable[[], Any]:
        """Takes what the view needs on the loop (the dicts are copies); the view is built off it."""
        loaded, statuses, retry_times = self.loaded, self.modules.statuses, self.modules.retry_times()
        now, keys, root_namespace = time.time(), self.cache.watched_keys(), self.settings.translate.root_namespace
        return lambda: config_view(
            loaded, statuses, retry_times, now, attachment_report(loaded.config, keys, root_namespace)
        )

    def _may_fetch(self, sha256: str, request: Request) -> bool:
        if self._tls is None or not self._tls.mutual:
            return True
        namespace = certificate_namespace(request.peer_uris, self.settings.trust_domain)
        return namespace is not None and may_fetch_module(
            sha256, namespace, self.loaded.config.plugins, self.modules.statuses, self.settings.translate.root_namespace
        )

    async def reload(self) -> None:
        async with self._reload_lock:  # each load starts from the one before it
            # Watch where the roots lead now (a symlink swap or a replaced folder moves them) before reading.
            self._watcher.refresh()
            # Reading and parsing every changed file can take long: in a worker, so that no xDS stream stalls;
            # one of its own, so that no module download can hold it up.
            with self.metrics.reload_seconds.time():
                self.loaded = await asyncio.get_running_loop().run_in_executor(
                    self._loader, self._load, self.loaded, self._watcher.writes_in_progress()
                )
        self._report(self.loaded.errors, self.loaded.warnings)
        self.modules.require(module_requests(self.loaded.config))
        self._rebuild()
        if self.ready.is_set():
            self._log_summary()

    def _log_summary(self) -> None:
        """At start, and after a reload that changed what is served."""
        summary = serving_summary(self.loaded, self.modules.statuses, self.cache.watched_keys())
        if summary != self._last_summary:
            log.info("%s", summary)
            self._last_summary = summary

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
        with self.metrics.translation_seconds.time():
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
        changed = []
        for key in self.cache.watched_keys():
            if self.cache.set(key, self.snapshot_for(key)):
                log.info("new config for %s", key)
                changed.append(key)
        self.convergence.rebuilt(changed, self.xds.connections.values())

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


class _Events(StreamEvents[ProxyClass]):
    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    def admit(self, key: ProxyClass, context: grpc.aio.ServicerContext) -> str | None:
        tls, trust_domain = self._plane._tls, self._plane.settings.trust_domain
        if tls is None or not tls.mutual:
            return None
        return namespace_refusal(key.namespace, auth_context_uris(context.auth_context()), trust_domain)

    def pushed(self, connection: Connection[ProxyClass], seconds: float) -> None:
        self._plane.metrics.push_seconds.observe(seconds)
        self._plane.convergence.pushed(connection)

    def answered(self, connection: Connection[ProxyClass]) -> None:
        self._plane.convergence.answered(connection, list(self._plane.xds.connections.values()))


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
