"""Wires the pipeline together for `controlplane serve`: directory → model → modules → translation →
snapshots → ADS, with the watcher and the HTTP port at the edges."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from controlplane.errors import ConfigError
from controlplane.http_server import HttpServer
from controlplane.model import ModuleFailed, ModuleReady, ProxyClass
from controlplane.modules.index import ModuleIndex
from controlplane.modules.policy import module_requests
from controlplane.modules.resolver import ModuleResolver, ResolverSettings
from controlplane.modules.store import ModuleStore
from controlplane.node import proxy_class
from controlplane.source.directory import LoadedDirectory, load_directory
from controlplane.source.watcher import DirectoryWatcher
from controlplane.translate.resources import TranslateSettings, translate
from controlplane.xds.ads import AggregatedDiscoveryServer
from controlplane.xds.cache import SnapshotCache
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
    debounce_seconds: float = 0.05
    resync_seconds: float = 30.0


@dataclass
class ControlPlane:
    settings: ServeSettings
    loaded: LoadedDirectory = field(default_factory=LoadedDirectory)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.cache: SnapshotCache[ProxyClass] = SnapshotCache()
        self.cache.on_first_watch = self._build_first
        self.store = ModuleStore(self.settings.cache_dir)
        self.modules = ModuleResolver(
            self.store, ModuleIndex(self.settings.cache_dir), self.settings.modules, self._rebuild
        )
        self.ads = AggregatedDiscoveryServer(self.cache, proxy_class, self.ready)
        self._reload_wanted = asyncio.Event()
        self._reported: set[ConfigError] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._watcher = DirectoryWatcher(list(self.settings.config_dirs), self._reload_wanted.set)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._grpc = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.ads, self._grpc)
        self.xds_port = self._grpc.add_insecure_port(f"{_host(self.settings.host)}:{self.settings.xds_port}")
        self._http = HttpServer(
            self.settings.host,
            self.settings.http_port,
            self.store,
            loop,
            self.ready.is_set,
            {"/debug/config": self.config_status, "/debug/proxies": self.proxy_status},
        )
        self.http_port = self._http.port
        self._http.start()
        await self._grpc.start()
        self._watcher.start(loop)
        self.reload()
        # Proxies get nothing until the directory is loaded and its modules settled, so that none is
        # ever sent a partial config.
        await self.modules.settled()
        self.ready.set()
        self._tasks.append(asyncio.create_task(self._reload_loop()))
        self._tasks.append(asyncio.create_task(self.modules.run()))
        log.info(
            "serving xDS on %s:%d and HTTP on %s:%d",
            self.settings.host,
            self.xds_port,
            self.settings.host,
            self.http_port,
        )

    async def stop(self) -> None:
        self._watcher.stop()
        for task in self._tasks:
            task.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=1)
        if self._http is not None:
            self._http.stop()

    def reload(self) -> None:
        self.loaded = load_directory(list(self.settings.config_dirs), self.loaded)
        errors = set(self.loaded.errors)
        for error in sorted(errors - self._reported):
            log.error("%s", error)
        self._reported = errors
        self.modules.require(module_requests(self.loaded.config))
        self._rebuild()

    def snapshot_for(self, proxy: ProxyClass) -> Snapshot:
        resources = translate(self.loaded.config, proxy, self.modules.statuses, self.settings.translate)
        return Snapshot.of(
            {CLUSTER: resources.clusters, LISTENER: resources.listeners, EXTENSION_CONFIG: resources.extension_configs}
        )

    def _build_first(self, proxy: ProxyClass) -> None:
        self.cache.set(proxy, self.snapshot_for(proxy))

    def _rebuild(self) -> None:
        for key in self.cache.watched_keys():
            if self.cache.set(key, self.snapshot_for(key)):
                log.info("new config for %s", key)

    async def _reload_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._reload_wanted.wait(), timeout=self.settings.resync_seconds)
            except TimeoutError:
                pass
            # Editors and git write several events for one change: take them as one.
            await asyncio.sleep(self.settings.debounce_seconds)
            self._reload_wanted.clear()
            try:
                self.reload()
            except Exception:  # a bug in one reload must not stop the server from taking the next
                log.exception("reload failed; still serving the previous config")

    def config_status(self) -> dict[str, Any]:
        statuses = self.modules.statuses
        return {
            "errors": [str(e) for e in self.loaded.errors],
            "files": {
                path: {"errors": [str(e) for e in state.errors + tuple(e for d in state.documents for e in d.errors)]}
                for path, state in self.loaded.files.items()
            },
            "serving": [
                {
                    "kind": key.kind,
                    "namespace": key.namespace,
                    "name": key.name,
                    "source": str(served.value.source),
                    "last_good": served.stale,
                }
                for key, served in self.loaded.served.items()
            ],
            "modules": {
                key.url: (
                    {"state": "ready", "sha256": status.sha256, "size": status.size}
                    if isinstance(status, ModuleReady)
                    else {"state": "failed", "reason": status.reason}
                    if isinstance(status, ModuleFailed)
                    else {"state": "fetching"}
                )
                for key, status in ((p.module, statuses.get(p.module)) for p in self.loaded.config.plugins)
            },
        }

    def proxy_status(self) -> list[dict[str, Any]]:
        return [
            {
                "node": c.node_id,
                "class": str(c.key),
                "types": {
                    type_url: {
                        "sent": s.sent.version if s.sent else "",
                        "acked": s.acked_version,
                        "rejected": s.rejected_version,
                        "error": s.error,
                    }
                    for type_url, s in c.types.items()
                },
            }
            for c in self.ads.connections.values()
        ]


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(settings: ServeSettings) -> None:
    plane = ControlPlane(settings)
    await plane.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await plane.stop()
