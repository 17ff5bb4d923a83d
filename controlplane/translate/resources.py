"""From the model, one proxy class and the state of the modules to the Envoy resources that proxy gets.
Pure: no I/O, no clock; equal inputs give equal messages."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from controlplane.addresses import is_ip, parse_host_port
from controlplane.model import (
    Config,
    EgressPort,
    FailStrategy,
    IngressPort,
    ModuleFailed,
    ModuleKey,
    ModuleReady,
    ModuleStatus,
    PluginType,
    ProxyClass,
    Resolution,
    ServiceEndpoint,
    ServiceEntry,
    Sidecar,
    WasmPlugin,
)
from controlplane.translate.selection import (
    ListenerInfo,
    egress_host_matches,
    listener_side,
    select_plugins,
    select_sidecar,
    visible_services,
    why_not_on_listener,
)

ECDS_NAME_PREFIX = "extensions.istio.io/wasmplugin/"
V8_RUNTIME = "envoy.wasm.runtime.v8"
HTTP_PROTOCOLS = frozenset({"", "HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
HTTP2_PROTOCOLS = frozenset({"HTTP2", "GRPC", "GRPC-WEB"})
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def type_url(message: type[Message]) -> str:
    return "type.googleapis.com/" + message.DESCRIPTOR.full_name


HTTP_FILTER_TYPES = (type_url(http_wasm_pb2.Wasm), type_url(http_rbac_pb2.RBAC))
NETWORK_FILTER_TYPES = (type_url(network_wasm_pb2.Wasm), type_url(network_rbac_pb2.RBAC))


ModuleDelivery = Literal["inline", "local"]


@dataclass(frozen=True)
class TranslateSettings:
    root_namespace: str = "istio-system"
    module_delivery: ModuleDelivery = "inline"
    """inline: each module travels inside its plugin's ECDS config; local: as a file name the proxies read
    from `local_module_dir`."""
    local_module_dir: str = ""
    """With local delivery: the folder where the proxies see the module cache."""


ModuleCode = Callable[[str], "bytes | None"]
"""A verified module's bytes by its sha256; None when they are not at hand."""


@dataclass(frozen=True)
class ProxyResources:
    clusters: tuple[cluster_pb2.Cluster, ...]
    listeners: tuple[listener_pb2.Listener, ...]
    extension_configs: tuple[extension_pb2.TypedExtensionConfig, ...]


def ecds_name(plugin: WasmPlugin) -> str:
    return ECDS_NAME_PREFIX + plugin.qualified_name


def translate(
    config: Config,
    proxy: ProxyClass,
    modules: Mapping[ModuleKey, ModuleStatus],
    settings: TranslateSettings,
    code: ModuleCode = lambda sha256: None,
    retired: Mapping[str, PluginType] | None = None,
    extension_config: PluginTranslation | None = None,
) -> ProxyResources:
    """`code` gives the verified modules' bytes for inline delivery; `retired` names plugins this proxy was
    sent and that are gone, which then let every request through. `extension_config` makes each plugin's
    ECDS config (default: `extension_config_for` with these settings and code), so that a caller can share
    one config between the proxy classes that get the same plugin."""
    sidecar = select_sidecar(config, proxy, settings.root_namespace)
    # Every selected plugin gets its config, used by a listener here or not: a proxy with listeners of
    # its own names the plugins it wants, and a proxy only subscribes to the names it uses.
    plugins = select_plugins(config, proxy, settings.root_namespace)
    services = visible_services(config, proxy, sidecar)
    clusters = [_upstream_cluster(port) for port in (sidecar.ingress if sidecar else ())]
    clusters += [c for service, host in services for c in _service_clusters(service, host)]
    plans = listener_plans(sidecar, proxy, services)
    per_listener = [[p for p in plugins if not why_not_on_listener(p, plan.info)] for plan in plans]
    listeners = [_listener(plan, used) for plan, used in zip(plans, per_listener, strict=True)]
    make = extension_config or (lambda plugin, status: extension_config_for(plugin, status, settings, code))
    extension_configs = [c for c in (make(p, modules.get(p.module)) for p in plugins) if c is not None]
    extension_configs += [pass_through(name, plugin_type) for name, plugin_type in sorted((retired or {}).items())]
    return ProxyResources(tuple(clusters), tuple(listeners), tuple(extension_configs))


def upstream_cluster_name(port: IngressPort) -> str:
    return f"inbound|{port.number}||"


def listener_name(port: IngressPort) -> str:
    return f"inbound|{port.number}"


def outbound_cluster_name(port: int, host: str) -> str:
    """Istio's name for a service's cluster, which plugins use to call the service."""
    return f"outbound|{port}||{host}"


def egress_listener_name(port: EgressPort) -> str:
    """As Istio names a Sidecar egress listener bound to an address."""
    return f"{port.bind}_{port.number}"


@dataclass(frozen=True)
class Route:
    domains: tuple[str, ...]
    cluster: str


@dataclass(frozen=True)
class ListenerPlan:
    """One listener a proxy gets, before plugins are placed on it."""

    info: ListenerInfo
    bind: str
    protocol: str
    routes: tuple[Route, ...]
    """HTTP: a virtual host each; TCP: the first takes the connection."""


def listener_plans(
    sidecar: Sidecar | None, proxy: ProxyClass, services: list[tuple[ServiceEntry, str]]
) -> list[ListenerPlan]:
    """Inbound listeners from the Sidecar's `ingress` (SERVER-side), outbound ones from its `egress`
    (CLIENT-side, routing to the services its `hosts` name); every listener of a gateway is CLIENT-side."""
    if sidecar is None:
        return []
    plans = [
        ListenerPlan(
            ListenerInfo(listener_name(port), port.number, listener_side(proxy, inbound=True)),
            port.bind or "0.0.0.0",
            port.protocol,
            (Route(("*",), upstream_cluster_name(port)),),
        )
        for port in sidecar.ingress
    ]
    for port in sidecar.egress:
        if not port.number:
            continue
        routes = []
        for service, host in services:
            if not any(egress_host_matches(h, sidecar.namespace, service, host) for h in port.hosts):
                continue
            for service_port in service.ports:
                if service_port.number == port.number and service.resolution is not Resolution.NONE:
                    routes.append(Route((host, f"{host}:{port.number}"), outbound_cluster_name(port.number, host)))
        plans.append(
            ListenerPlan(
                ListenerInfo(egress_listener_name(port), port.number, listener_side(proxy, inbound=False)),
                port.bind,
                port.protocol,
                tuple(routes),
            )
        )
    return plans


def _listener(plan: ListenerPlan, plugins: list[WasmPlugin]) -> listener_pb2.Listener:
    network_filters = [
        listener_components_pb2.Filter(name=ecds_name(p), config_discovery=_discovery(NETWORK_FILTER_TYPES))
        for p in plugins
        if p.type == PluginType.NETWORK
    ]
    http_plugins = [p for p in plugins if p.type == PluginType.HTTP]
    stat_prefix = plan.info.name.replace("|", "_")
    if plan.protocol in HTTP_PROTOCOLS:
        terminal = _typed_filter(
            "envoy.filters.network.http_connection_manager", _http_connection_manager(plan, http_plugins)
        )
    else:
        # Without a service to go to the connection is refused: Envoy has no cluster of that name.
        cluster = plan.routes[0].cluster if plan.routes else BLACK_HOLE_CLUSTER
        terminal = _typed_filter(
            "envoy.filters.network.tcp_proxy", tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)
        )
    return listener_pb2.Listener(
        name=plan.info.name,
        address=socket_address(plan.bind, plan.info.port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[*network_filters, terminal])],
    )


BLACK_HOLE_CLUSTER = "BlackHoleCluster"


def _http_connection_manager(plan: ListenerPlan, plugins: list[WasmPlugin]) -> hcm_pb2.HttpConnectionManager:
    virtual_hosts = [
        route_components_pb2.VirtualHost(
            name=route.cluster,
            domains=list(route.domains),
            routes=[
                route_components_pb2.Route(
                    match=route_components_pb2.RouteMatch(prefix="/"),
                    route=route_components_pb2.RouteAction(
                        cluster=route.cluster, timeout=duration_pb2.Duration(seconds=0)
                    ),
                )
            ],
        )
        for route in plan.routes
    ]
    filters = [hcm_pb2.HttpFilter(name=ecds_name(p), config_discovery=_discovery(HTTP_FILTER_TYPES)) for p in plugins]
    router = hcm_pb2.HttpFilter(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=plan.info.name.replace("|", "_"),
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(name=plan.info.name, virtual_hosts=virtual_hosts),
        http_filters=[*filters, router],
    )


@functools.lru_cache(maxsize=8)
def _discovery(type_urls: tuple[str, ...]) -> config_source_pb2.ExtensionConfigSource:
    # No default config and an initial fetch timeout of zero, as Istio: a listener that needs a plugin
    # warms until the plugin's config arrives rather than serving requests without it.
    return config_source_pb2.ExtensionConfigSource(
        config_source=config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            initial_fetch_timeout=duration_pb2.Duration(seconds=0),
            resource_api_version=config_source_pb2.V3,
        ),
        type_urls=list(type_urls),
    )


PluginTranslation = Callable[[WasmPlugin, "ModuleStatus | None"], "extension_pb2.TypedExtensionConfig | None"]


def extension_config_for(
    plugin: WasmPlugin, status: ModuleStatus | None, settings: TranslateSettings, code: ModuleCode
) -> extension_pb2.TypedExtensionConfig | None:
    """A plugin's ECDS config. None while the module is still being fetched, so that the listener waits for
    this config; except for a FAIL_OPEN plugin, which lets requests through meanwhile (its stand-in) rather
    than hold the listener. The module goes inside the config (or, with local delivery, its file name), so
    Envoy builds the new filter before it replaces the old one: no request ever meets a filter without code,
    and a module Envoy cannot load is a NACK that keeps the old filter. A module whose bytes are not at hand
    gets the stand-in, never a config without code."""
    if status is None:
        if plugin.fail_strategy != FailStrategy.FAIL_OPEN:
            return None
        status = ModuleFailed("still being fetched")
    config = extension_pb2.TypedExtensionConfig(name=ecds_name(plugin))
    filter_config: Message
    if isinstance(status, ModuleReady):
        wasm = http_wasm_pb2.Wasm() if plugin.type == PluginType.HTTP else network_wasm_pb2.Wasm()
        # Filled in place: a module of many megabytes is copied into the message once.
        if _set_code(wasm.config.vm_config.code, status.sha256, settings, code):
            _fill_plugin_config(wasm.config, plugin, status)
            filter_config = wasm
        else:
            filter_config = stand_in_filter(plugin, ModuleFailed(f"module {status.sha256} is no longer at hand"))
    else:
        filter_config = stand_in_filter(plugin, status)
    config.typed_config.Pack(filter_config, deterministic=True)
    return config


def _set_code(target: base_pb2.AsyncDataSource, sha256: str, settings: TranslateSettings, code: ModuleCode) -> bool:
    if settings.module_delivery == "local":
        target.local.filename = f"{settings.local_module_dir.rstrip('/')}/{sha256}.wasm"
        return True
    content = code(sha256)
    if content is None:
        return False
    target.local.inline_bytes = content
    return True


def stand_in_filter(plugin: WasmPlugin, status: ModuleFailed) -> Message:
    """What runs in place of a plugin whose module cannot be had: FAIL_OPEN lets every request through,
    anything else denies every request (Istio's agent does the same with the same RBAC filters)."""
    deny = plugin.fail_strategy != FailStrategy.FAIL_OPEN
    prefix = "wasm-default-deny" if deny else "wasm-default-allow"
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW) if deny else None
    if plugin.type == PluginType.HTTP:
        return http_rbac_pb2.RBAC(rules=rules, rules_stat_prefix=prefix)
    return network_rbac_pb2.RBAC(rules=rules, stat_prefix=prefix)


def pass_through(name: str, plugin_type: PluginType) -> extension_pb2.TypedExtensionConfig:
    """The config of a plugin that is gone, for a listener that still names it: lets every request through.
    (A listener from this server drops the filter instead.)"""
    config = extension_pb2.TypedExtensionConfig(name=name)
    filter_config = (
        http_rbac_pb2.RBAC(rules_stat_prefix="wasm-removed")
        if plugin_type == PluginType.HTTP
        else network_rbac_pb2.RBAC(stat_prefix="wasm-removed")
    )
    config.typed_config.Pack(filter_config, deterministic=True)
    return config


_FAILURE_POLICIES = {
    FailStrategy.FAIL_CLOSE: wasm_pb2.FAIL_CLOSED,
    FailStrategy.FAIL_OPEN: wasm_pb2.FAIL_OPEN,
    FailStrategy.FAIL_RELOAD: wasm_pb2.FAIL_RELOAD,
}


def _fill_plugin_config(config: wasm_pb2.PluginConfig, plugin: WasmPlugin, module: ModuleReady) -> None:
    config.name = plugin.qualified_name
    config.root_id = plugin.plugin_name
    config.failure_policy = _FAILURE_POLICIES[plugin.fail_strategy]
    vm_config = config.vm_config
    # One VM per module: with one shared (empty) vm_id, Envoy 1.40 can run a plugin with another plugin's
    # module on the same listener. Plugins of one module still share their VM.
    vm_config.vm_id = module.sha256
    vm_config.runtime = V8_RUNTIME
    if plugin.env:
        vm_config.environment_variables.host_env_keys.extend(e.name for e in plugin.env if e.from_host)
        for env in plugin.env:
            if not env.from_host:
                vm_config.environment_variables.key_values[env.name] = env.value
    if plugin.plugin_config:
        config.configuration.Pack(wrappers_pb2.StringValue(value=plugin.plugin_config))


def _typed_filter(name: str, message: Message) -> listener_components_pb2.Filter:
    result = listener_components_pb2.Filter(name=name)
    result.typed_config.Pack(message, deterministic=True)
    return result


@functools.lru_cache(maxsize=1024)
def _upstream_cluster(port: IngressPort) -> cluster_pb2.Cluster:
    """The same for every proxy class with that port (made once; the message is never changed after)."""
    return _make_upstream_cluster(port)


def _make_upstream_cluster(port: IngressPort) -> cluster_pb2.Cluster:
    endpoint = port.default_endpoint
    if endpoint.startswith("unix://"):
        address = address_pb2.Address(pipe=address_pb2.Pipe(path=endpoint[len("unix://") :]))
        return _cluster(upstream_cluster_name(port), [address], cluster_pb2.Cluster.STATIC)
    host, port_number = parse_host_port(endpoint)  # checked when the Sidecar was loaded
    # `0.0.0.0:PORT`, `[::]:PORT` or `:PORT` mean "the workload's own address" in Istio; beside the workload
    # that is loopback.
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    cluster = endpoint_cluster(upstream_cluster_name(port), host, port_number)
    if port.protocol in HTTP2_PROTOCOLS:
        # The connection manager takes h2 from clients; a gRPC backend must be spoken to in h2 too.
        speak_http2(cluster)
    return cluster


def speak_http2(cluster: cluster_pb2.Cluster, keepalive: protocol_pb2.KeepaliveSettings | None = None) -> None:
    """Makes the cluster's connections HTTP/2, as gRPC needs; `keepalive`: pings on idle connections."""
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(connection_keepalive=keepalive)
        )
    )
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(options, deterministic=True)


_DISCOVERY_TYPES = {
    Resolution.STATIC: cluster_pb2.Cluster.STATIC,
    Resolution.DNS: cluster_pb2.Cluster.STRICT_DNS,
    Resolution.DNS_ROUND_ROBIN: cluster_pb2.Cluster.LOGICAL_DNS,
}


def _service_clusters(service: ServiceEntry, host: str) -> list[cluster_pb2.Cluster]:
    """One cluster per port of a ServiceEntry host, named `outbound|PORT||HOST`. Endpoints serve a port on
    the number their `ports` map gives it, else on the port's targetPort, else on its number; DNS
    resolution without endpoints resolves the host itself. Resolution NONE needs traffic capture to know
    where a connection was going, which a proxy without it does not have: no cluster."""
    if service.resolution is Resolution.NONE:
        return []
    clusters = []
    for port in service.ports:
        default_port = port.target_port or port.number
        addresses = []
        for endpoint in service.endpoints or (ServiceEndpoint(host, ()),):
            if endpoint.address.startswith("unix://"):
                addresses.append(address_pb2.Address(pipe=address_pb2.Pipe(path=endpoint.address[len("unix://") :])))
            else:
                number = dict(endpoint.ports).get(port.name, default_port)
                addresses.append(socket_address(endpoint.address, number))
        cluster = _cluster(outbound_cluster_name(port.number, host), addresses, _DISCOVERY_TYPES[service.resolution])
        if port.protocol in HTTP2_PROTOCOLS:
            speak_http2(cluster)
        clusters.append(cluster)
    return clusters


def endpoint_cluster(name: str, host: str, port: int, resolve: bool | None = None) -> cluster_pb2.Cluster:
    """A cluster of one endpoint. `resolve`: whether the host is looked up in DNS (and again when its
    answer changes); by default only when it is a name, not an IP address."""
    if resolve is None:
        resolve = not is_ip(host)
    discovery = cluster_pb2.Cluster.STRICT_DNS if resolve else cluster_pb2.Cluster.STATIC
    return _cluster(name, [socket_address(host, port)], discovery)


def _cluster(name: str, addresses: list[address_pb2.Address], discovery: int) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=discovery,
        connect_timeout=duration_pb2.Duration(seconds=5),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=address))
                        for address in addresses
                    ]
                )
            ],
        ),
    )


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))
