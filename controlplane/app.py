"""Wires the pipeline together for `controlplane serve`: directory → model → modules → snapshots → ADS,
with the watcher, the module and admin ports and the metrics at the edges. A reload that changed the config
or a module's state rebuilds the snapshot of every watched proxy class; the cache pushes to a class's streams
only when its snapshot's version changed."""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from controlplane.addresses import host_for_url
from controlplane.admin import (
    AdminRoutes,
    Metrics,
    StateCollector,
    built,
    config_view,
    ecds_rejections,
    proxies_view,
    serving_summary,
)
from controlplane.convergence import Convergence
from controlplane.http_server import HttpServer, Request, module_routes
from controlplane.identity import auth_context_uris, certificate_namespace, may_fetch_module, namespace_refusal
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
from controlplane.tls import ServerTls
from controlplane.translate.attachment import attachment_report
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.server import SERVER_OPTIONS, Callbacks, DiscoveryServer, StreamOpening, StreamRefused
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
        convergence = self.convergence
        callbacks: Callbacks[ProxyClass] = Callbacks(
            on_stream_open=self._admit,
            on_stream_closed=convergence.closed,
            on_response=lambda connection, response: convergence.responded(connection),
            on_reply=lambda connection, reply: convergence.answered(connection),
        )
        self.xds = DiscoveryServer(self.cache, proxy_class, self.ready, callbacks)
        self._loaded = LoadedDirectory()
        self.metrics.registry.register(
            StateCollector(self.ready.is_set, lambda: self.loaded, lambda: self.modules.statuses, self.xds)
        )
        self.tls = ServerTls(settings.tls) if settings.tls else None
        self._tasks: list[asyncio.Task[None]] = []
        self._built_from: object = None
        """What the snapshots were last built from: the config and the modules' states."""
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._admin: HttpServer | None = None
        self._admin_routes: AdminRoutes | None = None
        self._last_summary = ""

    @property
    def loaded(self) -> LoadedDirectory:
        """The directory as last loaded, with the server's signature policy applied to its plugins."""
        return self._loaded

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._grpc = grpc.aio.server(options=SERVER_OPTIONS)
        self.xds.register(self._grpc)
        xds_address = f"{host_for_url(self.settings.host)}:{self.settings.xds_port}"
        if self.tls is not None:
            self.xds_port = self._grpc.add_secure_port(xds_address, self.tls.grpc_credentials())
        else:
            self.xds_port = self._grpc.add_insecure_port(xds_address)
        limits = self.settings.http_limits
        routes = module_routes(self.store, self._may_fetch)
        self._http = HttpServer("module", self.settings.host, self.settings.http_port, routes, limits, self.tls)
        views = {"/debug/config": self._config_view, "/debug/proxies": self._proxies_view}
        self._admin_routes = AdminRoutes(self.ready.is_set, self.metrics, views)
        self._admin = HttpServer(
            "admin", self.settings.admin_host, self.settings.admin_port, self._admin_routes, limits
        )
        await self._http.start()
        await self._admin.start()
        self.http_port, self.admin_port = self._http.port, self._admin.port
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
        self._log_summary()
        # What start-up made lives as long as the server: out of the collector's sight, so that collections
        # with thousands of streams open scan only what changes. Streams allocate much and keep little.
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        for work in (self.source.follow(self.reload), self.modules.run()):
            task = asyncio.create_task(work)
            task.add_done_callback(_report_end)
            self._tasks.append(task)
        host, admin_host = self.settings.host, self.settings.admin_host
        secured = (" with mTLS" if self.tls.mutual else " with TLS") if self.tls else ""
        log.info(
            "serving xDS on %s:%d%s, modules on %s:%d, admin on %s:%d",
            *(host, self.xds_port, secured, host, self.http_port, admin_host, self.admin_port),
        )

    async def stop(self) -> None:
        """Stops accepting, then closes the streams: each Envoy keeps its config and reconnects at once (to
        another replica where there is one)."""
        self.source.stop()
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
        summary = serving_summary(self.loaded, self.modules.statuses, self.cache.watched_keys())
        if summary != self._last_summary:
            log.info("%s", summary)
            self._last_summary = summary

    def _config_view(self) -> Callable[[], Any]:
        """Takes what the view needs on the loop (copies of the records, which the loop changes); the view is
        built off it."""
        records = {key: copy.copy(record) for key, record in self.modules.records().items()}
        loaded, now, clock = self.loaded, time.time(), time.monotonic()
        keys, root_namespace = self.cache.watched_keys(), self.settings.translate.root_namespace
        rejections = ecds_rejections(self.xds.connections.values())
        return lambda: config_view(
            loaded, records, now, clock, attachment_report(loaded.config, keys, root_namespace), rejections
        )

    def _proxies_view(self) -> Callable[[], Any]:
        """Built on the loop: the streams change their state there."""
        return built(proxies_view(self.xds.connections.values()))

    def _may_fetch(self, sha256: str, request: Request) -> bool:
        """With mTLS, a module goes only to a proxy of a namespace that one of its plugins applies to."""
        if self.tls is None or not self.tls.mutual:
            return True
        namespace = certificate_namespace(request.peer_uris, self.settings.trust_domain)
        return namespace is not None and may_fetch_module(
            sha256, namespace, self.loaded.config.plugins, self.modules.statuses, self.settings.translate.root_namespace
        )

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

    def _admit(self, opening: StreamOpening[ProxyClass]) -> None:
        """With mTLS, a proxy asks only as the namespace its certificate names."""
        if self.tls is None or not self.tls.mutual:
            return
        uris = auth_context_uris(opening.auth)
        refusal = namespace_refusal(opening.key.namespace, uris, self.settings.trust_domain)
        if refusal is not None:
            raise StreamRefused(refusal)


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
