"""Which declared objects apply to a proxy, and in what order: Istio's rules, as pure functions. Each
rule that can leave a plugin out says why, so that people can be told why a plugin does not attach."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.model import (
    Config,
    EgressHost,
    Phase,
    ProxyClass,
    ServiceEntry,
    Sidecar,
    WasmPlugin,
    WorkloadMode,
    selector_matches,
)

PHASE_ORDER = {Phase.AUTHN: 0, Phase.AUTHZ: 1, Phase.STATS: 2, Phase.UNSPECIFIED_PHASE: 3}
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_GROUP_KIND = ("gateway.networking.k8s.io", "Gateway")


@dataclass(frozen=True)
class ListenerInfo:
    """What a plugin's `match` is compared with: a listener's port and the side of the traffic it carries."""

    name: str
    port: int
    side: WorkloadMode
    """CLIENT (outbound, and every listener of a gateway) or SERVER (inbound)."""


def listener_side(proxy: ProxyClass, inbound: bool) -> WorkloadMode:
    """Istio's workloadModeForListenerClass (pilot/pkg/model/extensions.go): gateway listeners and sidecar
    outbound listeners are CLIENT, sidecar inbound listeners SERVER."""
    return WorkloadMode.SERVER if inbound and not proxy.gateway else WorkloadMode.CLIENT


def why_not_selected(plugin: WasmPlugin, proxy: ProxyClass, root_namespace: str) -> str:
    """ "" when the plugin applies to the proxy, else the reason it does not. Istio's WasmPluginsByListenerInfo
    (pilot/pkg/model/push_context.go) looks in the proxy's namespace and the root namespace, then
    ShouldAttachPolicy (pilot/pkg/model/policyattachment.go) decides by selector or targetRefs."""
    if plugin.namespace not in (proxy.namespace, root_namespace):
        return (
            f"namespace: the plugin is in {plugin.namespace!r}; a proxy in {proxy.namespace!r} takes plugins of "
            f"its own namespace and of the root namespace {root_namespace!r}"
        )
    labels = dict(proxy.labels)
    gateway_name = labels.get(GATEWAY_NAME_LABEL)
    if gateway_name is None:
        if plugin.target_refs:
            return f"targetRefs: only select Gateway API gateways (proxies labelled {GATEWAY_NAME_LABEL})"
        return _selector_mismatch(plugin, proxy)
    if not plugin.target_refs:
        return _selector_mismatch(plugin, proxy)
    reasons = []
    for ref in plugin.target_refs:
        group_kind = (ref.group, ref.kind)
        if plugin.namespace != proxy.namespace:
            reasons.append(f"{ref.kind} {ref.name!r}: a targetRef selects gateways of the plugin's own namespace")
        elif group_kind != GATEWAY_GROUP_KIND:
            reasons.append(f"{ref.group or 'core'}/{ref.kind} {ref.name!r}: not a gateway.networking.k8s.io/Gateway")
        elif ref.name != gateway_name:
            reasons.append(f"Gateway {ref.name!r}: this proxy is gateway {gateway_name!r}")
        else:
            return ""
    return "targetRefs: " + "; ".join(reasons)


def _selector_mismatch(plugin: WasmPlugin, proxy: ProxyClass) -> str:
    if plugin.selector is None or selector_matches(plugin.selector, proxy.labels):
        return ""
    missing = ",".join(f"{k}={v}" for k, v in plugin.selector if (k, v) not in proxy.labels)
    return f"selector: the proxy's labels lack {missing}"


def plugin_selects(plugin: WasmPlugin, proxy: ProxyClass, root_namespace: str) -> bool:
    return not why_not_selected(plugin, proxy, root_namespace)


def why_not_on_listener(plugin: WasmPlugin, listener: ListenerInfo) -> str:
    """ "" when the plugin's `match` takes the listener's traffic, else why not: Istio's matchTrafficSelectors
    (pilot/pkg/model/extensions.go). UNDEFINED and CLIENT_AND_SERVER take both sides; no ports, every port."""
    if not plugin.match:
        return ""
    reasons = []
    for selector in plugin.match:
        if selector.mode not in (WorkloadMode.CLIENT_AND_SERVER, listener.side):
            reasons.append(f"mode {selector.mode.value} (this listener is {listener.side.value}-side)")
        elif selector.ports and listener.port not in selector.ports:
            ports = ",".join(str(p) for p in selector.ports)
            reasons.append(f"ports {ports} (this listener is port {listener.port})")
        else:
            return ""
    return "match: " + "; ".join(reasons)


def filter_order(plugin: WasmPlugin, proxy_namespace: str = "") -> tuple[int, int, int, int, str]:
    """Phase, then priority (higher first; unset after every set value, as Istio's MinInt32), then the
    proxy's own namespace before the root namespace (Istio lists them in that order and sorts stably), then
    name, so that the order never depends on the order of files."""
    unset = 1 if plugin.priority is None else 0
    foreign = 0 if plugin.namespace == proxy_namespace else 1
    return (PHASE_ORDER[plugin.phase], unset, -(plugin.priority or 0), foreign, plugin.name)


def select_plugins(config: Config, proxy: ProxyClass, root_namespace: str) -> list[WasmPlugin]:
    """The plugins of a proxy in filter-chain order."""
    return sorted(
        (p for p in config.plugins if plugin_selects(p, proxy, root_namespace)),
        key=lambda p: filter_order(p, proxy.namespace),
    )


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


def egress_host_matches(pattern: EgressHost, sidecar_namespace: str, service: ServiceEntry, host: str) -> bool:
    """A Sidecar egress `namespace/host` against one host of a ServiceEntry."""
    if pattern.namespace == "~":
        return False
    if pattern.namespace == "." and service.namespace != sidecar_namespace:
        return False
    if pattern.namespace not in ("*", ".") and pattern.namespace != service.namespace:
        return False
    if pattern.host == "*" or pattern.host == host:
        return True
    return pattern.host.startswith("*.") and host.endswith(pattern.host[1:])


def visible_services(config: Config, proxy: ProxyClass, sidecar: Sidecar | None) -> list[tuple[ServiceEntry, str]]:
    """The (ServiceEntry, host) pairs a proxy gets clusters for: those exported to its namespace and, when
    its Sidecar has egress listeners, named by one of them (Istio's default egress is `*/*`). A host two
    entries declare goes to the first by namespace and name."""
    patterns = [h for port in sidecar.egress for h in port.hosts] if sidecar and sidecar.egress else None
    seen: set[str] = set()
    result = []
    for service in config.service_entries:
        if not service.visible_from(proxy.namespace):
            continue
        for host in service.hosts:
            if host in seen:
                continue
            if patterns is not None and sidecar is not None:
                if not any(egress_host_matches(p, sidecar.namespace, service, host) for p in patterns):
                    continue
            seen.add(host)
            result.append((service, host))
    return result
