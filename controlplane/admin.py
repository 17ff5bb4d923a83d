"""What the HTTP port shows people: per-file status, per-proxy xDS state and Prometheus metrics. Pure
views over the server's state; the event loop that owns the state calls them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from controlplane.model import ModuleKey, ModuleReady, ModuleStatus
from controlplane.modules.resolver import module_views
from controlplane.source.directory import LoadedDirectory
from controlplane.source.status import file_status
from controlplane.xds.connection import Connection
from controlplane.xds.server import DiscoveryServer


def config_view(
    loaded: LoadedDirectory,
    modules: Mapping[ModuleKey, ModuleStatus],
    retry_times: Mapping[ModuleKey, float],
    now: float,
    attachment: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`attachment`: per plugin, where it runs on the connected proxies and why not elsewhere."""
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
        "modules": module_views(loaded.config.plugins, modules, retry_times, now),
        "attachment": attachment or [],
    }


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
