"""Wires the pipeline together for `controlplane serve`: directory → model → modules → snapshots → ADS,
with the watcher, the module and admin ports and the metrics at the edges. A reload that changed the config
or a module's state rebuilds the snapshot of every watched proxy class; the cache pushes to a class's streams
only when its snapshot's version changed."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass, field, replace

from controlplane.access import ProxyAccess
from controlplane.admin import AdminRoutes, Metrics, ServerViews, StateCollector
from controlplane.convergence import Convergence
from controlplane.http_server import module_routes
from controlplane.model import ModuleReady, ProxyClass
from controlplane.modules.index import ModuleIndex
from controlplane.modules.policy import module_requests, start_waits_for
from controlplane.modules.resolver import ModuleResolver
from controlplane.modules.store import ModuleStore
from controlplane.node import proxy_class
from controlplane.ports import Ports
from controlplane.serve_settings import ServeSettings
from controlplane.snapshots.builder import SnapshotBuilder
from controlplane.source.directory import LoadedDirectory
from controlplane.source.follower import DirectoryFollower
from controlplane.tls import ServerTls
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import Callbacks, DiscoveryServer
from controlplane.xds.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass
class ControlPlane:
    settings: ServeSettings
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        settings = self.settings
        self.metrics = Metrics()
        self.convergence = Convergence(self.metrics.push_seconds.observe, self.metrics.change_to_ack_seconds.observe)
        self.source = DirectoryFollower(
            settings.config_dirs, settings.cache_dir, settings.settle, settings.resync_seconds, self.convergence.changed
        )
        # Inline delivery sends modules from memory, so that the cache dir is a cache and nothing more.
        self.store = ModuleStore(settings.cache_dir, keep_in_memory=settings.translate.module_delivery == "inline")
        self.modules = ModuleResolver(
            self.store,
            ModuleIndex(settings.cache_dir),
            settings.modules,
            self._rebuild,
            lambda result: self.metrics.module_fetches.labels(result).inc(),
        )
        self.snapshots = SnapshotBuilder(settings.translate, self.store.read)
        self.cache: SnapshotCache[ProxyClass] = SnapshotCache(self._build_first, self.snapshots.forget)
        self.tls = ServerTls(settings.tls) if settings.tls else None
        root_namespace = settings.translate.root_namespace
        mutual = bool(self.tls and self.tls.mutual)
        statuses = lambda: self.modules.statuses  # noqa: E731
        self.access = ProxyAccess(mutual, settings.trust_domain, root_namespace, lambda: self.loaded.config, statuses)
        convergence = self.convergence
        callbacks: Callbacks[ProxyClass] = Callbacks(
            on_stream_open=self.access.admit,
            on_stream_closed=convergence.closed,
            on_response=lambda connection, response: convergence.responded(connection),
            on_reply=lambda connection, reply: convergence.answered(connection),
        )
        self.xds = DiscoveryServer(self.cache, proxy_class, self.ready, callbacks)
        self._loaded = LoadedDirectory()
        self.metrics.registry.register(StateCollector(self.ready.is_set, lambda: self.loaded, statuses, self.xds))
        self.views = ServerViews(lambda: self.loaded, self.modules, self.cache.watched_keys, self.xds, root_namespace)
        self._tasks: list[asyncio.Task[None]] = []
        self._built_from: object = None
        """What the snapshots were last built from: the config and the modules' states."""
        self.ports: Ports | None = None

    @property
    def loaded(self) -> LoadedDirectory:
        """The directory as last loaded, with the server's signature policy applied to its plugins."""
        return self._loaded

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        views = {"/debug/config": self.views.config, "/debug/proxies": self.views.proxies}
        admin_routes = AdminRoutes(self.ready.is_set, self.metrics, views)
        self.ports = Ports(
            self.settings, self.tls, self.xds, module_routes(self.store, self.access.may_fetch), admin_routes
        )
        await self.ports.start()
        self.source.start(loop)
        await self.reload()
        # Proxies get nothing until the directory is loaded and its modules settled, so that none is
        # ever sent a partial config.
        try:
            waits_for = start_waits_for(self.loaded.config)
            await asyncio.wait_for(self.modules.available(waits_for.__contains__), self.settings.startup_fetch_seconds)
        except TimeoutError:
            # Past this, a module still on its way only holds back the listeners that use it: Envoy warms
            # them until its config arrives.
            log.warning("modules still being fetched after %.0fs; serving", self.settings.startup_fetch_seconds)
        self.ready.set()
        self._log_summary()
        # What start-up made lives as long as the server: out of the collector's sight, so that collections
        # with thousands of streams open scan only what changes. Streams allocate much and keep little.
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        for work in (self.source.follow(self.reload), self.modules.run()):
            task = asyncio.create_task(work)
            task.add_done_callback(_report_end)
            self._tasks.append(task)
        log.info("serving %s", self.ports.describe())

    async def stop(self) -> None:
        self.source.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ports is not None:
            await self.ports.stop()

    async def reload(self) -> None:
        with self.metrics.reload_seconds.time():
            loaded = await self.source.load()
        self._loaded = loaded = replace(loaded, config=self.settings.signatures.apply(loaded.config))
        self.modules.require(module_requests(loaded.config))
        self._rebuild()
        if self.ready.is_set():
            self._log_summary()

    def _log_summary(self) -> None:
        """At start, and after a reload that changed what is served."""
        summary = self.views.new_summary()
        if summary is not None:
            log.info("%s", summary)

    def _build(self, proxy: ProxyClass) -> Snapshot:
        with self.metrics.translation_seconds.time():
            return self.snapshots.build(self.loaded.config, self.modules.statuses, proxy)

    def _build_first(self, proxy: ProxyClass) -> None:
        self.cache.set(proxy, self._build(proxy))

    def _rebuild(self) -> None:
        """A new snapshot for every watched class; the cache wakes the streams of those whose version changed.
        A rescan or an event that changed neither the config nor a module's state costs nothing per class."""
        config, statuses = self.loaded.config, self.modules.statuses
        built_from = (config, dict(statuses))
        if built_from == self._built_from:
            self.convergence.rebuilt((), ())
            return
        self._built_from = built_from
        self.snapshots.retain(config, statuses)
        self.store.keep_only(s.sha256 for s in statuses.values() if isinstance(s, ModuleReady))
        changed = [p for p in self.cache.watched_keys() if self.cache.set(p, self._build(p))]
        if changed:
            # A count: a class is named by labels its proxies chose, of any size.
            log.info("new config for %d proxy classes", len(changed))
        self.convergence.rebuilt(changed, self.xds.connections.values())


def _report_end(task: asyncio.Task[None]) -> None:
    """Background tasks run for the server's life: one that ends otherwise is a bug to be seen in the log."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_coro(), exc_info=task.exception())


async def serve(settings: ServeSettings) -> None:
    """Serves until SIGINT or SIGTERM."""
    plane, stop = ControlPlane(settings), asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await plane.start()
    await stop.wait()
    await plane.stop()
