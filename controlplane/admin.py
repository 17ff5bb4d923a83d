"""What the HTTP port shows people: per-file status, per-proxy xDS state and Prometheus metrics. Pure
views over the server's state; the event loop that owns the state calls them."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from controlplane.model import ModuleFailed, ModuleKey, ModuleReady, ModuleStatus, WasmPlugin
from controlplane.modules.resolver import ModuleRecord
from controlplane.modules.signatures import signer_names
from controlplane.redaction import redact
from controlplane.source.directory import LoadedDirectory
from controlplane.source.status import file_status
from controlplane.translate.resources import ECDS_NAME_PREFIX
from controlplane.xds.connection import Connection, TypeState
from controlplane.xds.server import DiscoveryServer
from controlplane.xds.snapshot import EXTENSION_CONFIG


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
    return [
        {
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
        }
        for c in connections
    ]


def metrics_text(
    ready: bool, loaded: LoadedDirectory, modules: Mapping[ModuleKey, ModuleStatus], xds: DiscoveryServer[Any]
) -> str:
    """Prometheus text exposition."""
    module_states = {"ready": 0, "failed": 0, "fetching": 0}
    for plugin in loaded.config.plugins:
        status = modules.get(plugin.module)
        module_states["ready" if isinstance(status, ModuleReady) else "failed" if status else "fetching"] += 1
    rejecting = Counter(t for c in xds.connections.values() for t, s in c.types.items() if s.error)
    lines = [
        *_metric("controlplane_ready", "1 once the directory is loaded.", {"": float(ready)}),
        *_metric("controlplane_config_errors", "Errors in the config directory.", {"": len(loaded.errors)}),
        *_metric("controlplane_plugins", "WasmPlugins served, by the state of their module.", module_states, "module"),
        *_metric("controlplane_proxies_connected", "Proxy streams open.", {"": len(xds.connections)}),
        *_metric("controlplane_xds_responses_total", "Responses sent, by type.", xds.responses_sent, "type_url"),
        *_metric("controlplane_xds_rejections_total", "NACKs received, by type.", xds.rejections, "type_url"),
        *_metric(
            "controlplane_proxies_rejecting", "Proxies whose last answer was a NACK, by type.", rejecting, "type_url"
        ),
    ]
    return "\n".join(lines) + "\n"


def _metric(name: str, help_text: str, samples: Mapping[str, float], label: str = "") -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {'counter' if name.endswith('_total') else 'gauge'}"]
    for key, value in sorted(samples.items()):
        labels = f'{{{label}="{_escaped(key)}"}}' if label else ""
        lines.append(f"{name}{labels} {value:g}")
    return lines


def _escaped(value: str) -> str:
    """A label value as the Prometheus text format wants it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
