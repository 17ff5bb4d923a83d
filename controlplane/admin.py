"""What the admin port shows people: health, readiness, per-file status, per-proxy xDS state and Prometheus
metrics. The views are pure over the server's state: the event loop that owns the state takes what a view
needs (cheaply), and the view is built and encoded off the loop, so that a large directory never stalls a
push."""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from controlplane.http_server import Reply, Request, text
from controlplane.model import ModuleFailed, ModuleKey, ModuleReady, ModuleStatus, ProxyClass, WasmPlugin
from controlplane.modules.resolver import ModuleRecord, ModuleResolver
from controlplane.modules.signatures import signer_names
from controlplane.redaction import redact
from controlplane.source.directory import LoadedDirectory
from controlplane.source.status import file_status
from controlplane.translate.attachment import attachment_report
from controlplane.translate.resources import ECDS_NAME_PREFIX
from controlplane.xds.connection import Connection, TypeState
from controlplane.xds.server import DiscoveryServer
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER

TYPE_NAMES = {CLUSTER: "CDS", LISTENER: "LDS", EXTENSION_CONFIG: "ECDS"}
"""The short names `istioctl proxy-status` uses."""

SYNCED, STALE, NACKED, NOT_SENT = "SYNCED", "STALE", "NACKED", "NOT SENT"


def config_view(
    loaded: LoadedDirectory,
    modules: Mapping[ModuleKey, ModuleRecord],
    now: float,
    clock: float,
    attachment: list[dict[str, Any]] | None = None,
    connections: Iterable[Connection[Any]] = (),
) -> dict[str, Any]:
    """`/debug/config`: per file what serves and what failed, per module its state, and per plugin where it
    runs on the connected proxies and why not elsewhere (`attachment`). `now` (seconds since the epoch) and
    `clock` (the monotonic clock) are read at the same instant. `connections`: the proxy streams, whose NACKs
    of a plugin's config show on its module."""
    views = module_views(loaded.config.plugins, modules, now, clock)
    return {
        "errors": [str(e) for e in loaded.errors],
        "files": file_status(loaded),
        "serving": [
            {
                "kind": key.kind,
                "namespace": key.namespace,
                "name": key.name,
                "source": str(served.value.source),
                "last_good": served.stale,
            }
            for key, served in loaded.served.items()
        ],
        "modules": [_with_rejections(view, connections) for view in views],
        "attachment": attachment or [],
    }


def sync_state(state: TypeState | None) -> str:
    """A proxy's state for one type, as `istioctl proxy-status` names it."""
    if state is None or not state.sent_version:
        return NOT_SENT
    if state.error:
        return NACKED
    if state.outstanding or state.acked_version != state.sent_version:
        return STALE
    return SYNCED


def ecds_rejections(connections: Iterable[Connection[Any]]) -> list[Connection[Any]]:
    """Copies of the streams with a rejected plugin config, holding only that: what `config_view` reads of
    them, taken on the loop so that the view can be built off it."""
    copies: list[Connection[Any]] = []
    for c in connections:
        state = c.types.get(EXTENSION_CONFIG)
        if state is not None and state.rejected:
            copy = Connection(c.node_id, c.key, c.protocol, c.connected_at)
            copy.types[EXTENSION_CONFIG] = TypeState(rejected=dict(state.rejected))
            copies.append(copy)
    return copies


def _with_rejections(view: dict[str, Any], connections: Iterable[Connection[Any]]) -> dict[str, Any]:
    """What Envoy runs, beside what the control plane holds: a module that is ready here but whose plugin
    config a proxy rejected (it could not load the module, or read its file) is not running there; that
    proxy keeps the config it had."""
    names = {ECDS_NAME_PREFIX + plugin.replace("/", ".", 1) for plugin in view["plugins"]}
    rejected = sorted(
        {
            (c.node_id, error)
            for c in connections
            for name, error in c.types.get(EXTENSION_CONFIG, TypeState()).rejected.items()
            if name in names
        }
    )
    if not rejected:
        return view
    return {**view, "rejected_by": [{"node": node, "error": error} for node, error in rejected]}


def module_views(
    plugins: Iterable[WasmPlugin], records: Mapping[ModuleKey, ModuleRecord], now: float, clock: float
) -> list[dict[str, Any]]:
    """One entry per module key: plugins with the same url but another sha256 or pull secret are other
    modules, so the url alone does not name one. The url is shown redacted. A failed module shows when it
    is tried again, as a time people read: the resolver's retry times are on the monotonic `clock`."""
    users: dict[ModuleKey, list[str]] = {}
    for plugin in plugins:
        users.setdefault(plugin.module, []).append(f"{plugin.namespace}/{plugin.name}")
    views = []
    for key, names in sorted(users.items(), key=_order):
        record = records.get(key)
        view = _module_view(key, sorted(names), record.status if record else None)
        if view["state"] == "failed" and record is not None:
            retry_at = None if record.retry_at is None else now + max(0.0, record.retry_at - clock)
            view.update(_retry_view(retry_at, now))
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
    if key.signers:  # each entry: who must have signed (one of them); a ready module's signatures verified
        view["signed_by"] = signer_names(key)
    if isinstance(status, ModuleReady):
        return {**view, "state": "ready", "module_sha256": status.sha256, "size": status.size}
    if isinstance(status, ModuleFailed):
        return {**view, "state": "failed", "reason": status.reason}
    return {**view, "state": "fetching"}


def proxies_view(connections: Iterable[Connection[Any]]) -> list[dict[str, Any]]:
    views = []
    for c in connections:
        view: dict[str, Any] = {
            "node": c.node_id,
            "class": str(c.key),
            "protocol": c.protocol,
            "types": {
                type_url: {
                    "sent": s.sent_version,
                    "acked": s.acked_version,
                    "rejected": s.rejected_version,
                    "error": s.error,
                }
                for type_url, s in c.types.items()
            },
            "sync": {name: sync_state(c.types.get(type_url)) for type_url, name in TYPE_NAMES.items()},
        }
        if isinstance(c.key, ProxyClass):
            view["namespace"] = c.key.namespace
            view["labels"] = dict(c.key.labels)
        views.append(view)
    return views


def serving_summary(
    loaded: LoadedDirectory, modules: Mapping[ModuleKey, ModuleStatus], proxy_classes: Iterable[Any]
) -> str:
    """One log line on what is served. Proxy classes are counted, not listed: labels can be long."""
    states = Counter(_module_state(modules.get(key)) for key in {p.module for p in loaded.config.plugins})
    return (
        f"serving {len(loaded.config.plugins)} WasmPlugin(s) and {len(loaded.config.sidecars)} Sidecar(s) from "
        f"{len(loaded.files)} file(s), {len(loaded.errors)} error(s); modules: {states['ready']} ready, "
        f"{states['failed']} failed, {states['fetching']} fetching; {len(list(proxy_classes))} proxy class(es)"
    )


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (two servers in one process, as tests
    run them, do not mix). Histograms and counters are observed as things happen; gauges are read from the
    server's state at each scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reload_seconds = Histogram(
            "controlplane_reload_seconds", "Reading and validating the config directory.", registry=self.registry
        )
        self.translation_seconds = Histogram(
            "controlplane_translation_seconds", "Translating the config for one proxy class.", registry=self.registry
        )
        self.push_seconds = Histogram(
            "controlplane_xds_push_seconds",
            "From a new snapshot of a proxy's class to its first response written to that proxy's stream.",
            registry=self.registry,
        )
        self.change_to_ack_seconds = Histogram(
            "controlplane_change_to_ack_seconds",
            "From a change in the config directory to the ACK of the last proxy it changed.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf")),
            registry=self.registry,
        )
        self.module_fetches = CounterMetric(
            "controlplane_module_fetches", "Module fetches, by result.", ["result"], registry=self.registry
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """The gauges and counters read from the server's state at each scrape, on the event loop."""

    def __init__(
        self,
        ready: Callable[[], bool],
        loaded: Callable[[], LoadedDirectory],
        modules: Callable[[], Mapping[ModuleKey, ModuleStatus]],
        xds: DiscoveryServer[Any],
    ) -> None:
        self._ready, self._loaded, self._modules, self._xds = ready, loaded, modules, xds

    def collect(self) -> Iterator[Metric]:
        loaded, statuses = self._loaded(), self._modules()
        yield GaugeMetricFamily("controlplane_ready", "1 once the directory is loaded.", float(self._ready()))
        yield GaugeMetricFamily("controlplane_config_errors", "Errors in the config directory.", len(loaded.errors))
        plugins = GaugeMetricFamily(
            "controlplane_plugins", "WasmPlugins served, by the state of their module.", labels=["module"]
        )
        by_plugin = Counter(_module_state(statuses.get(p.module)) for p in loaded.config.plugins)
        modules = GaugeMetricFamily("controlplane_modules", "Modules, by state.", labels=["state"])
        by_module = Counter(_module_state(statuses.get(key)) for key in {p.module for p in loaded.config.plugins})
        for state in ("ready", "failed", "fetching"):
            plugins.add_metric([state], by_plugin[state])
            modules.add_metric([state], by_module[state])
        yield plugins
        yield modules
        connected = GaugeMetricFamily(
            "controlplane_proxies_connected", "Proxy streams open, by protocol.", labels=["protocol"]
        )
        by_protocol = Counter(c.protocol for c in self._xds.connections.values())
        for protocol in ("sotw", "delta"):
            connected.add_metric([protocol], by_protocol[protocol])
        yield connected
        yield _counter("controlplane_xds_responses", "Responses sent, by type.", self._xds.responses_sent)
        yield _counter("controlplane_xds_rejections", "NACKs received, by type.", self._xds.rejections)
        rejecting = GaugeMetricFamily(
            "controlplane_proxies_rejecting", "Proxies whose last answer was a NACK, by type.", labels=["type_url"]
        )
        for type_url, count in sorted(
            Counter(t for c in self._xds.connections.values() for t, s in c.types.items() if s.error).items()
        ):
            rejecting.add_metric([type_url], count)
        yield rejecting


def _module_state(status: ModuleStatus | None) -> str:
    if isinstance(status, ModuleReady):
        return "ready"
    return "failed" if isinstance(status, ModuleFailed) else "fetching"


def _counter(name: str, documentation: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["type_url"])
    for type_url, count in sorted(counts.items()):
        family.add_metric([type_url], count)
    return family


StatusView = Callable[[], Callable[[], Any]]
"""Called on the event loop, which owns the state: takes what the view needs and returns the function that
builds it, which runs off the loop."""


def built(value: Any) -> Callable[[], Any]:
    """A view small enough to build on the loop (it reads state the loop changes)."""
    return lambda: value


class AdminRoutes:
    """The admin port's pages."""

    def __init__(self, ready: Callable[[], bool], metrics: Metrics, views: Mapping[str, StatusView]) -> None:
        self._ready = ready
        self._metrics = metrics
        self._views = views
        # Its own threads: views never wait behind module downloads, nor hold them up.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="admin-view")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, request: Request) -> Reply:
        if request.path == "/healthz":
            return text(HTTPStatus.OK, "ok\n")
        if request.path == "/ready":
            ready = self._ready()
            return text(HTTPStatus.OK, "ready\n") if ready else text(HTTPStatus.SERVICE_UNAVAILABLE, "loading\n")
        if request.path == "/metrics":
            return Reply(HTTPStatus.OK, self._metrics.exposition(), CONTENT_TYPE_LATEST)
        view = self._views.get(request.path)
        if view is None:
            return text(HTTPStatus.NOT_FOUND, "not found\n")
        build = view()
        body = await asyncio.get_running_loop().run_in_executor(self._executor, _encoded, build)
        return Reply(HTTPStatus.OK, body, "application/json")


def _encoded(build: Callable[[], Any]) -> bytes:
    return json.dumps(build(), indent=2, sort_keys=True).encode() + b"\n"


class ServerViews:
    """`/debug/config`, `/debug/proxies` and the summary line, read from the running server's parts. What a
    view needs is taken on the event loop, which changes it; the view is built off it."""

    def __init__(
        self,
        loaded: Callable[[], LoadedDirectory],
        modules: ModuleResolver,
        proxy_classes: Callable[[], Iterable[ProxyClass]],
        xds: DiscoveryServer[ProxyClass],
        root_namespace: str,
    ) -> None:
        self._loaded = loaded
        self._modules = modules
        self._proxy_classes = proxy_classes
        self._xds = xds
        self._root_namespace = root_namespace
        self._last_summary = ""

    def config(self) -> Callable[[], Any]:
        records = {key: copy.copy(record) for key, record in self._modules.records().items()}
        loaded, now, clock, keys = self._loaded(), time.time(), time.monotonic(), list(self._proxy_classes())
        rejections = ecds_rejections(self._xds.connections.values())
        return lambda: config_view(
            loaded, records, now, clock, attachment_report(loaded.config, keys, self._root_namespace), rejections
        )

    def proxies(self) -> Callable[[], Any]:
        return built(proxies_view(self._xds.connections.values()))

    def new_summary(self) -> str | None:
        """The summary line when it differs from the last one given, else None."""
        summary = serving_summary(self._loaded(), self._modules.statuses, self._proxy_classes())
        if summary == self._last_summary:
            return None
        self._last_summary = summary
        return summary
