"""Wires the pipeline together for `controlplane serve`: directory → model → modules → snapshots → ADS,
with the watcher and the HTTP port at the edges. A reload that changed the config or a module's state
rebuilds the snapshot of every watched proxy class; the cache pushes to a class's streams only when its
snapshot's version changed."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from dataclasses import dataclass, field, replace

import grpc

from controlplane.addresses import host_for_url
from controlplane.admin import config_view, metrics_text, proxies_view
from controlplane.http_server import HttpServer
from controlplane.model import ModuleReady, ProxyClass
from controlplane.modules.index import ModuleIndex
from controlplane.modules.policy import module_requests, start_waits_for
from controlplane.modules.resolver import ModuleResolver
from controlplane.modules.store import ModuleStore
from controlplane.node import proxy_class
from controlplane.serve_settings import ServeSettings
from controlplane.snapshots.builder import SnapshotBuilder
from controlplane.source.directory import LoadedDirectory
from controlplane.source.follower import DirectoryFollower
from controlplane.translate.attachment import attachment_report
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import SERVER_OPTIONS, DiscoveryServer

log = logging.getLogger(__name__)


@dataclass
class ControlPlane:
    settings: ServeSettings
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        settings = self.settings
        self.source = DirectoryFollower(
            settings.config_dirs, settings.cache_dir, settings.settle, settings.resync_seconds
        )
        # Inline delivery sends modules from memory, so that the cache dir is a cache and nothing more.
        self.store = ModuleStore(settings.cache_dir, keep_in_memory=settings.translate.module_delivery == "inline")
        self.modules = ModuleResolver(self.store, ModuleIndex(settings.cache_dir), settings.modules, self._rebuild)
        self.snapshots = SnapshotBuilder(settings.translate, self.store.read)
        self.cache: SnapshotCache[ProxyClass] = SnapshotCache(self._build_first, self.snapshots.forget)
        self.xds = DiscoveryServer(self.cache, proxy_class, self.ready)
        self._loaded = LoadedDirectory()
        self._tasks: list[asyncio.Task[None]] = []
        self._built_from: object = None
        """What the snapshots were last built from: the config and the modules' states."""
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None

    @property
    def loaded(self) -> LoadedDirectory:
        """The directory as last loaded, with the server's signature policy applied to its plugins."""
        return self._loaded

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._grpc = grpc.aio.server(options=SERVER_OPTIONS)
        self.xds.register(self._grpc)
        self.xds_port = self._grpc.add_insecure_port(f"{host_for_url(self.settings.host)}:{self.settings.xds_port}")
        views = {
            "/debug/config": lambda: config_view(
                self.loaded,
                self.modules.records(),
                time.time(),
                time.monotonic(),
                attachment_report(
                    self.loaded.config, self.cache.watched_keys(), self.settings.translate.root_namespace
                ),
                self.xds.connections.values(),
            ),
            "/debug/proxies": lambda: proxies_view(self.xds.connections.values()),
            "/metrics": lambda: metrics_text(self.ready.is_set(), self.loaded, self.modules.statuses, self.xds),
        }
        self._http = HttpServer(self.settings.host, self.settings.http_port, self.store, loop, self.ready.is_set, views)
        self.http_port = self._http.port
        self._http.start()
        await self._grpc.start()
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
        # What start-up made lives as long as the server: out of the collector's sight, so that collections
        # with thousands of streams open scan only what changes. Streams allocate much and keep little.
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        for work in (self.source.follow(self.reload), self.modules.run()):
            task = asyncio.create_task(work)
            task.add_done_callback(_report_end)
            self._tasks.append(task)
        host = self.settings.host
        log.info("serving xDS on %s:%d and HTTP on %s:%d", host, self.xds_port, host, self.http_port)

    async def stop(self) -> None:
        self.source.stop()
        for task in self._tasks:
            task.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=1)
        if self._http is not None:
            self._http.stop()

    async def reload(self) -> None:
        loaded = await self.source.load()
        self._loaded = loaded = replace(loaded, config=self.settings.signatures.apply(loaded.config))
        self.modules.require(module_requests(loaded.config))
        self._rebuild()

    def _build_first(self, proxy: ProxyClass) -> None:
        self.cache.set(proxy, self.snapshots.build(self.loaded.config, self.modules.statuses, proxy))

    def _rebuild(self) -> None:
        """A new snapshot for every watched class; the cache wakes the streams of those whose version changed.
        A rescan or an event that changed neither the config nor a module's state costs nothing per class."""
        config, statuses = self.loaded.config, self.modules.statuses
        built_from = (config, dict(statuses))
        if built_from == self._built_from:
            return
        self._built_from = built_from
        self.snapshots.retain(config, statuses)
        self.store.keep_only(s.sha256 for s in statuses.values() if isinstance(s, ModuleReady))
        changed = sum(self.cache.set(p, self.snapshots.build(config, statuses, p)) for p in self.cache.watched_keys())
        if changed:
            # A count: a class is named by labels its proxies chose, of any size.
            log.info("new config for %d proxy classes", changed)


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
