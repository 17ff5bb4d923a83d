"""Wires the pipeline together for `controlplane serve`: directory → model → modules → snapshots → ADS,
with the watcher, the module and admin ports and the metrics at the edges. A reload, or a module whose state
changed, republishes the snapshots; the cache pushes to a class's streams only when its version changed."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field, replace

from controlplane.access import ProxyAccess
from controlplane.admin import AdminRoutes, Metrics, ServerViews, StateCollector
from controlplane.convergence import Convergence
from controlplane.http_server import module_routes
from controlplane.lifetime import cancel_all, freeze_startup_objects, release_memory_after_bursts, run_for_life
from controlplane.model import ProxyClass
from controlplane.modules.index import ModuleIndex
from controlplane.modules.policy import module_requests
from controlplane.modules.resolver import ModuleResolver
from controlplane.modules.store import ModuleStore
from controlplane.node import proxy_class
from controlplane.ports import Ports
from controlplane.serve_settings import ServeSettings
from controlplane.snapshots.builder import SnapshotBuilder
from controlplane.snapshots.publisher import SnapshotPublisher
from controlplane.source.directory import LoadedDirectory
from controlplane.source.follower import DirectoryFollower
from controlplane.tls import ServerTls
from controlplane.xds.server import Callbacks, DiscoveryServer

log = logging.getLogger(__name__)


@dataclass
class ControlPlane:
    settings: ServeSettings
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        settings, self.metrics = self.settings, Metrics()
        self.convergence = convergence = Convergence(
            self.metrics.push_seconds.observe, self.metrics.change_to_ack_seconds.observe
        )
        self.source = DirectoryFollower(
            settings.config_dirs, settings.cache_dir, settings.settle, settings.resync_seconds, convergence.changed
        )
        # Inline delivery sends modules from memory, so that the cache dir is a cache and nothing more.
        self.store = ModuleStore(settings.cache_dir, keep_in_memory=settings.translate.module_delivery == "inline")
        fetched = lambda result: self.metrics.module_fetches.labels(result).inc()  # noqa: E731
        index = ModuleIndex(settings.cache_dir)
        self.modules = ModuleResolver(self.store, index, settings.modules, self._publish, fetched)
        self.snapshots = SnapshotBuilder(settings.translate, self.store.read)
        inputs = lambda: (self.loaded.config, self.modules.statuses)  # noqa: E731
        self.publisher = SnapshotPublisher(self.snapshots, inputs, self.metrics.translation_seconds.time)
        self.cache = self.publisher.cache
        self.tls = ServerTls(settings.tls) if settings.tls else None
        root_namespace, statuses = settings.translate.root_namespace, lambda: self.modules.statuses
        mutual = bool(self.tls and self.tls.mutual)
        self.access = ProxyAccess(mutual, settings.trust_domain, root_namespace, lambda: self.loaded.config, statuses)
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
        self.ports: Ports | None = None

    @property
    def loaded(self) -> LoadedDirectory:
        """The directory as last loaded, with the server's signature policy applied to its plugins."""
        return self._loaded

    async def start(self) -> None:
        views = {"/debug/config": self.views.config, "/debug/proxies": self.views.proxies}
        admin_routes = AdminRoutes(self.ready.is_set, self.metrics, views)
        modules = module_routes(self.store, self.access.may_fetch)
        self.ports = Ports(self.settings, self.tls, self.xds, modules, admin_routes)
        await self.ports.start()
        self.source.start(asyncio.get_running_loop())
        await self.reload()
        # Proxies get nothing until the directory is loaded and its modules settled, so that none is
        # ever sent a partial config. Past the wait, a module still on its way only holds back the
        # listeners that use it: Envoy warms them until its config arrives.
        wait = self.settings.startup_fetch_seconds
        if not await self.modules.first_push_ready(self.loaded.config, wait):
            log.warning("modules still being fetched after %.0fs; serving", wait)
        self.ready.set()
        self._log_summary()
        freeze_startup_objects()
        sent = lambda: self.xds.responses_sent.total()  # noqa: E731
        self._tasks = run_for_life(
            self.source.follow(self.reload), self.modules.run(), release_memory_after_bursts(sent)
        )
        log.info("serving %s", self.ports.describe())

    async def stop(self) -> None:
        self.source.stop()
        await cancel_all(self._tasks)
        if self.ports is not None:
            await self.ports.stop()

    async def reload(self) -> None:
        with self.metrics.reload_seconds.time():
            loaded = await self.source.load()
        self._loaded = loaded = replace(loaded, config=self.settings.signatures.apply(loaded.config))
        self.modules.require(module_requests(loaded.config))
        self._publish()
        if self.ready.is_set():
            self._log_summary()

    def _log_summary(self) -> None:
        """At start, and after a reload that changed what is served."""
        summary = self.views.new_summary()
        if summary is not None:
            log.info("%s", summary)

    def _publish(self) -> None:
        changed = self.publisher.publish()
        self.convergence.rebuilt(changed, self.xds.connections.values() if changed else ())


async def serve(settings: ServeSettings) -> None:
    """Serves until SIGINT or SIGTERM."""
    plane, stop = ControlPlane(settings), asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await plane.start()
    await stop.wait()
    await plane.stop()
