"""Which declared objects apply to a proxy, and in what order: Istio's rules, as pure functions."""

from __future__ import annotations

from controlplane.model import (
    Config,
    IngressPort,
    Phase,
    ProxyClass,
    Sidecar,
    WasmPlugin,
    WorkloadMode,
    selector_matches,
)

PHASE_ORDER = {Phase.AUTHN: 0, Phase.AUTHZ: 1, Phase.STATS: 2, Phase.UNSPECIFIED_PHASE: 3}
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


def plugin_selects(plugin: WasmPlugin, proxy: ProxyClass, root_namespace: str) -> bool:
    if plugin.target_refs:
        # A Gateway reference selects the proxies Istio deploys for that gateway, which carry its name as a
        # label; Services and ServiceEntries name waypoints, which a directory of Sidecars does not have.
        return plugin.namespace == proxy.namespace and any(
            ref.kind == "Gateway" and (GATEWAY_NAME_LABEL, ref.name) in proxy.labels for ref in plugin.target_refs
        )
    if plugin.namespace != proxy.namespace and plugin.namespace != root_namespace:
        return False
    return plugin.selector is None or selector_matches(plugin.selector, proxy.labels)


def plugin_applies_to_port(plugin: WasmPlugin, port: IngressPort) -> bool:
    """Sidecar ingress listeners carry inbound (SERVER) traffic."""
    if not plugin.match:
        return True
    return any(
        selector.mode in (WorkloadMode.SERVER, WorkloadMode.CLIENT_AND_SERVER)
        and (not selector.ports or port.number in selector.ports)
        for selector in plugin.match
    )


def filter_order(plugin: WasmPlugin) -> tuple[int, int, int, str, str]:
    """Phase, then priority (higher first; unset after every set value, as Istio's MinInt32), then
    namespace and name so that the order never depends on the order of files."""
    unset = 1 if plugin.priority is None else 0
    return (PHASE_ORDER[plugin.phase], unset, -(plugin.priority or 0), plugin.namespace, plugin.name)


def select_plugins(config: Config, proxy: ProxyClass, root_namespace: str) -> list[WasmPlugin]:
    """The plugins of a proxy in filter-chain order."""
    return sorted((p for p in config.plugins if plugin_selects(p, proxy, root_namespace)), key=filter_order)


def select_sidecar(config: Config, proxy: ProxyClass, root_namespace: str) -> Sidecar | None:
    """Istio gives a proxy exactly one Sidecar: one in its namespace whose selector matches, else the
    namespace-wide one, else the root namespace's. Among equals the first by name wins (Istio takes the
    oldest; a directory has no creation time)."""
    in_namespace = [s for s in config.sidecars if s.namespace == proxy.namespace]
    for candidates in (
        [
            s
            for s in in_namespace
            if s.workload_labels is not None and selector_matches(s.workload_labels, proxy.labels)
        ],
        [s for s in in_namespace if s.workload_labels is None],
        [s for s in config.sidecars if s.namespace == root_namespace and s.workload_labels is None],
    ):
        if candidates:
            return min(candidates, key=lambda s: s.name)
    return None
