"""Which plugins a proxy gets, in which order, and the Envoy resources they become: pure functions on
model values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from controlplane.model import (
    Config,
    EnvVar,
    FailStrategy,
    IngressPort,
    ModuleFailed,
    ModuleKey,
    ModuleReady,
    ModuleStatus,
    Phase,
    PluginType,
    ProxyClass,
    PullPolicy,
    Sidecar,
    SourceRef,
    TargetRef,
    TrafficSelector,
    WasmPlugin,
    WorkloadMode,
    labels_from,
)
from controlplane.translate.resources import ProxyResources, TranslateSettings, translate
from controlplane.translate.selection import (
    GATEWAY_NAME_LABEL,
    ListenerInfo,
    select_plugins,
    select_sidecar,
    why_not_on_listener,
)
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER, Snapshot

ROOT = "istio-system"
SHA = "ab" * 32
MODULE_BYTES = b"\0asm a verified module"
SETTINGS = TranslateSettings()
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
HTTP_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
NETWORK_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
HCM_NAME = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"


def plugin(name: str, namespace: str = "default", **changes: object) -> WasmPlugin:
    """A plugin with Istio's defaults; `changes` overrides fields."""
    base = WasmPlugin(
        namespace=namespace,
        name=name,
        selector=None,
        target_refs=(),
        url=f"oci://example.com/{name}:1",
        sha256="",
        image_pull_policy=PullPolicy.UNSPECIFIED_POLICY,
        image_pull_secret="",
        plugin_config="",
        plugin_name="",
        phase=Phase.UNSPECIFIED_PHASE,
        priority=None,
        fail_strategy=FailStrategy.FAIL_CLOSE,
        env=(),
        match=(),
        type=PluginType.HTTP,
        source=SourceRef(f"{namespace}/{name}.yaml", 1),
    )
    return replace(base, **changes)


def port(number: int, protocol: str = "HTTP", endpoint: str = "127.0.0.1:9000") -> IngressPort:
    return IngressPort(number, protocol, "", "", endpoint)


def sidecar(
    name: str,
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    ports: tuple[IngressPort, ...] = (port(8080),),
) -> Sidecar:
    workload_labels = None if labels is None else labels_from(labels)
    return Sidecar(namespace, name, workload_labels, ports, SourceRef(f"{namespace}/{name}.yaml", 1))


def proxy(namespace: str = "default", **labels: str) -> ProxyClass:
    return ProxyClass(namespace, labels_from(labels))


def selected(plugins: list[WasmPlugin], on: ProxyClass | None = None) -> list[str]:
    """Qualified names of the plugins `on` gets, in filter order."""
    return [p.qualified_name for p in select_plugins(Config(plugins=tuple(plugins)), on or proxy(), ROOT)]


def ready(*plugins: WasmPlugin) -> dict[ModuleKey, ModuleStatus]:
    return {p.module: ModuleReady(SHA, 1024) for p in plugins}


def render(
    plugins: list[WasmPlugin],
    sidecars: list[Sidecar] | None = None,
    modules: Mapping[ModuleKey, ModuleStatus] | None = None,
    settings: TranslateSettings = SETTINGS,
    on: ProxyClass | None = None,
) -> ProxyResources:
    config = Config(plugins=tuple(plugins), sidecars=tuple(sidecars if sidecars is not None else [sidecar("web")]))
    modules = ready(*plugins) if modules is None else modules
    return translate(config, on or proxy(), modules, settings, code=lambda sha256: MODULE_BYTES)


def unpack(any_message, message_type: type[Message]) -> Message:  # type: ignore[no-untyped-def]
    message = message_type()
    assert any_message.Unpack(message), any_message.type_url
    return message


def listener_filters(listener: listener_pb2.Listener) -> list[listener_components_pb2.Filter]:
    (chain,) = listener.filter_chains
    return list(chain.filters)


def connection_manager(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    terminal = listener_filters(listener)[-1]
    assert terminal.name == HCM_NAME
    return unpack(terminal.typed_config, hcm_pb2.HttpConnectionManager)


def http_filter_names(listener: listener_pb2.Listener) -> list[str]:
    return [f.name for f in connection_manager(listener).http_filters]


def ecds(*qualified_names: str) -> list[str]:
    return [f"extensions.istio.io/wasmplugin/{name}" for name in qualified_names]


def only_extension_config(resources: ProxyResources) -> extension_pb2.TypedExtensionConfig:
    (config,) = resources.extension_configs
    return config


def wasm_plugin_config(resources: ProxyResources) -> wasm_pb2.PluginConfig:
    config = only_extension_config(resources)
    assert config.typed_config.type_url == WASM_TYPE
    return unpack(config.typed_config, http_wasm_pb2.Wasm).config


# --- order ------------------------------------------------------------------------------------------------


def test_phases_order_authn_authz_stats_then_unspecified() -> None:
    plugins = [
        plugin("d", phase=Phase.UNSPECIFIED_PHASE, priority=1000),
        plugin("c", phase=Phase.STATS, priority=1000),
        plugin("a", phase=Phase.AUTHN, priority=-1000),
        plugin("b", phase=Phase.AUTHZ),
    ]
    assert selected(plugins) == ["default.a", "default.b", "default.c", "default.d"]


def test_higher_priority_first_and_unset_after_every_set_value() -> None:
    plugins = [
        plugin("unset"),
        plugin("minus-five", priority=-5),
        plugin("ten", priority=10),
        plugin("zero", priority=0),
        plugin("most-negative", priority=-(2**31)),
        plugin("hundred", priority=100),
    ]
    assert selected(plugins) == [
        "default.hundred",
        "default.ten",
        "default.zero",
        "default.minus-five",
        "default.most-negative",
        "default.unset",
    ]


def test_ties_break_by_namespace_then_name_whatever_the_input_order() -> None:
    plugins = [
        plugin("b", priority=5),
        plugin("a", namespace=ROOT, priority=5),
        plugin("a", priority=5),
        plugin("c", namespace="aaa-first", priority=5),
        plugin("z", namespace=ROOT),
        plugin("y"),
    ]
    expected = ["default.a", "default.b", "istio-system.a", "default.y", "istio-system.z"]
    assert selected(plugins) == expected
    assert selected(list(reversed(plugins))) == expected
    assert selected(plugins[2:] + plugins[:2]) == expected


# --- who gets what -----------------------------------------------------------------------------------------


def test_root_namespace_plugins_apply_in_every_namespace() -> None:
    plugins = [plugin("everywhere", namespace=ROOT), plugin("web-only", namespace=ROOT, selector=(("app", "web"),))]
    assert selected(plugins, proxy("shop", app="web")) == ["istio-system.everywhere", "istio-system.web-only"]
    assert selected(plugins, proxy("other", app="db")) == ["istio-system.everywhere"]
    assert selected(plugins, proxy(ROOT)) == ["istio-system.everywhere"]


def test_a_plugin_in_another_namespace_does_not_apply() -> None:
    assert selected([plugin("p", namespace="shop")], proxy("default")) == []
    assert selected([plugin("p", namespace="shop", selector=(("app", "web"),))], proxy("default", app="web")) == []


def test_a_custom_root_namespace() -> None:
    config = Config(plugins=(plugin("p", namespace="mesh-root"),))
    assert select_plugins(config, proxy("shop"), "mesh-root") == list(config.plugins)
    assert select_plugins(config, proxy("shop"), ROOT) == []


@pytest.mark.parametrize(
    ("selector", "labels", "applies"),
    [
        ({"app": "web"}, {"app": "web"}, True),
        ({"app": "web"}, {"app": "web", "version": "v1"}, True),
        ({"app": "web", "version": "v1"}, {"app": "web", "version": "v1", "tier": "front"}, True),
        ({"app": "web", "version": "v2"}, {"app": "web", "version": "v1"}, False),
        ({"app": "web", "version": "v1"}, {"app": "web"}, False),
        ({"app": "web"}, {"app": "db"}, False),
        ({"app": "web"}, {}, False),
        ({}, {"app": "db"}, True),
    ],
)
def test_selector_matches_a_subset_of_the_labels(selector: dict, labels: dict, applies: bool) -> None:
    result = selected([plugin("p", selector=labels_from(selector))], proxy(**labels))
    assert result == (["default.p"] if applies else [])


def test_no_selector_selects_the_whole_namespace() -> None:
    plugins = [plugin("p")]
    assert selected(plugins, proxy()) == ["default.p"]
    assert selected(plugins, proxy(app="anything", version="v9")) == ["default.p"]


def test_gateway_target_ref_selects_the_gateway_proxies() -> None:
    gateway_ref = TargetRef("gateway.networking.k8s.io", "Gateway", "edge", "default")
    plugins = [plugin("gw", target_refs=(gateway_ref,))]
    assert selected(plugins, proxy(**{GATEWAY_NAME_LABEL: "edge", "app": "edge-istio"})) == ["default.gw"]
    assert selected(plugins, proxy(**{GATEWAY_NAME_LABEL: "other"})) == []
    assert selected(plugins, proxy(app="web")) == []
    assert selected(plugins, proxy("shop", **{GATEWAY_NAME_LABEL: "edge"})) == []


def test_a_target_ref_never_reaches_outside_the_plugin_namespace() -> None:
    plugins = [plugin("gw", target_refs=(TargetRef("gateway.networking.k8s.io", "Gateway", "edge", "apps"),))]
    assert selected(plugins, proxy("apps", **{GATEWAY_NAME_LABEL: "edge"})) == []


def test_a_service_target_ref_selects_no_sidecar() -> None:
    plugins = [plugin("svc", target_refs=(TargetRef("", "Service", "web", "default"),))]
    assert selected(plugins, proxy(app="web")) == []


def test_match_modes_and_ports_on_sidecar_ingress() -> None:
    plugins = [
        plugin("client-only", match=(TrafficSelector(WorkloadMode.CLIENT, ()),)),
        plugin("server-9090", match=(TrafficSelector(WorkloadMode.SERVER, (9090,)),)),
        plugin("both-8080", match=(TrafficSelector(WorkloadMode.CLIENT_AND_SERVER, (8080,)),)),
        plugin("everywhere"),
    ]
    resources = render(plugins, [sidecar("web", ports=(port(8080), port(9090)))])
    by_name = {listener.name: http_filter_names(listener) for listener in resources.listeners}
    assert by_name == {
        "inbound|8080": [*ecds("default.both-8080", "default.everywhere"), ROUTER],
        "inbound|9090": [*ecds("default.everywhere", "default.server-9090"), ROUTER],
    }
    # Configs go out for every selected plugin, for proxies whose own listeners name them.
    assert sorted(c.name for c in resources.extension_configs) == ecds(
        "default.both-8080", "default.client-only", "default.everywhere", "default.server-9090"
    )


@pytest.mark.parametrize(
    ("match", "number", "applies"),
    [
        ((), 80, True),
        ((TrafficSelector(WorkloadMode.CLIENT, ()),), 80, False),
        ((TrafficSelector(WorkloadMode.SERVER, ()),), 80, True),
        ((TrafficSelector(WorkloadMode.SERVER, (81,)),), 80, False),
        ((TrafficSelector(WorkloadMode.CLIENT, (80,)), TrafficSelector(WorkloadMode.SERVER, (80,))), 80, True),
        ((TrafficSelector(WorkloadMode.CLIENT_AND_SERVER, (80, 443)),), 443, True),
    ],
)
def test_plugin_applies_to_an_inbound_port(match: tuple[TrafficSelector, ...], number: int, applies: bool) -> None:
    inbound = ListenerInfo(f"inbound|{number}", number, WorkloadMode.SERVER)
    assert (why_not_on_listener(plugin("p", match=match), inbound) == "") is applies


def test_sidecar_choice_prefers_selector_then_namespace_then_root() -> None:
    matching = sidecar("matching", labels={"app": "web"})
    other_workload = sidecar("other-workload", labels={"app": "db"})
    namespace_wide = sidecar("namespace-wide")
    root = sidecar("root", namespace=ROOT)
    root_with_selector = sidecar("root-selective", namespace=ROOT, labels={"app": "web"})
    elsewhere = sidecar("elsewhere", namespace="shop", labels={"app": "web"})

    def chosen(*sidecars: Sidecar, on: ProxyClass = proxy(app="web", version="v1")) -> str | None:
        found = select_sidecar(Config(sidecars=sidecars), on, ROOT)
        return None if found is None else found.name

    everything = (root_with_selector, root, namespace_wide, other_workload, matching, elsewhere)
    assert chosen(*everything) == "matching"
    assert chosen(root, namespace_wide, other_workload, elsewhere) == "namespace-wide"
    assert chosen(root, other_workload, elsewhere, root_with_selector) == "root"
    assert chosen(other_workload, elsewhere, root_with_selector) is None
    assert chosen(*everything, on=proxy("shop", app="web")) == "elsewhere"
    assert chosen(*everything, on=proxy("payments")) == "root"


def test_among_equal_sidecars_the_first_by_name_wins() -> None:
    config = Config(sidecars=(sidecar("b"), sidecar("a")))
    found = select_sidecar(config, proxy(), ROOT)
    assert found is not None and found.name == "a"


# --- resources ---------------------------------------------------------------------------------------------


def test_one_listener_and_cluster_per_ingress_port() -> None:
    ports = (port(8080), port(9090, endpoint="app.local:7000"), port(5432, protocol="TCP", endpoint="127.0.0.1:15432"))
    resources = render([plugin("p")], [sidecar("web", ports=ports)])
    assert [listener.name for listener in resources.listeners] == ["inbound|8080", "inbound|9090", "inbound|5432"]
    assert [listener.address.socket_address.port_value for listener in resources.listeners] == [8080, 9090, 5432]
    assert [c.name for c in resources.clusters] == [
        "inbound|8080||",
        "inbound|9090||",
        "inbound|5432||",
    ]
    endpoints = [
        c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address for c in resources.clusters
    ]
    assert [(e.address, e.port_value) for e in endpoints] == [
        ("127.0.0.1", 9000),
        ("app.local", 7000),
        ("127.0.0.1", 15432),
    ]


def test_http_filters_are_ecds_entries_in_order_then_the_router() -> None:
    plugins = [plugin("stats", phase=Phase.STATS), plugin("authn", phase=Phase.AUTHN), plugin("late")]
    (listener,) = render(plugins).listeners
    filters = connection_manager(listener).http_filters
    assert [f.name for f in filters] == [*ecds("default.authn", "default.stats", "default.late"), ROUTER]
    for entry in filters[:-1]:
        discovery = entry.config_discovery
        assert discovery.config_source.HasField("ads")
        assert discovery.config_source.initial_fetch_timeout.ToSeconds() == 0
        assert list(discovery.type_urls) == [WASM_TYPE, HTTP_RBAC_TYPE]
        assert not discovery.HasField("default_config")
    assert filters[-1].typed_config.type_url == "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def test_the_route_sends_traffic_to_the_port_cluster() -> None:
    (listener,) = render([]).listeners
    (virtual_host,) = connection_manager(listener).route_config.virtual_hosts
    assert [route.route.cluster for route in virtual_host.routes] == ["inbound|8080||"]
    assert http_filter_names(listener) == [ROUTER]


def test_no_sidecar_means_no_listener_but_the_plugin_config_for_own_listeners() -> None:
    resources = render([plugin("p")], sidecars=[])
    assert resources.listeners == ()
    assert [c.name for c in resources.extension_configs] == ecds("default.p")
    assert resources.clusters == ()


def test_the_extension_config_carries_the_wasm_filter() -> None:
    p = plugin(
        "limiter",
        namespace=ROOT,
        plugin_name="ratelimit",
        plugin_config='{"deny_status":429,"requests_per_second":2}',
        sha256=SHA,
    )
    resources = render([p])
    assert only_extension_config(resources).name == "extensions.istio.io/wasmplugin/istio-system.limiter"
    config = wasm_plugin_config(resources)
    assert config.name == "istio-system.limiter"
    assert config.root_id == "ratelimit"
    configuration = unpack(config.configuration, wrappers_pb2.StringValue)
    assert json.loads(configuration.value) == {"deny_status": 429, "requests_per_second": 2}
    assert configuration.value == '{"deny_status":429,"requests_per_second":2}'
    assert config.vm_config.runtime == "envoy.wasm.runtime.v8"
    # The module inside the config: Envoy builds the new filter before it replaces the old one.
    assert config.vm_config.code.local.inline_bytes == MODULE_BYTES
    assert config.vm_config.vm_id == SHA
    assert not config.fail_open


def test_a_ready_module_whose_bytes_are_not_at_hand_gets_the_stand_in() -> None:
    p = plugin("p")
    config = Config(plugins=(p,), sidecars=(sidecar("web"),))
    resources = translate(config, proxy(), ready(p), SETTINGS, code=lambda sha256: None)
    rbac = unpack(only_extension_config(resources).typed_config, http_rbac_pb2.RBAC)
    assert rbac.rules_stat_prefix == "wasm-default-deny"  # type: ignore[attr-defined]


def test_no_plugin_config_sends_no_configuration() -> None:
    assert not wasm_plugin_config(render([plugin("p")])).HasField("configuration")


@pytest.mark.parametrize(
    ("strategy", "policy"),
    [
        (FailStrategy.FAIL_CLOSE, wasm_pb2.FAIL_CLOSED),
        (FailStrategy.FAIL_OPEN, wasm_pb2.FAIL_OPEN),
        (FailStrategy.FAIL_RELOAD, wasm_pb2.FAIL_RELOAD),
    ],
)
def test_fail_strategy_maps_to_failure_policy(strategy: FailStrategy, policy: int) -> None:
    config = wasm_plugin_config(render([plugin("p", fail_strategy=strategy)]))
    assert config.failure_policy == policy
    assert not config.fail_open


def failed_module_filter(strategy: FailStrategy, plugin_type: PluginType = PluginType.HTTP) -> Message:
    p = plugin("p", fail_strategy=strategy, type=plugin_type)
    config = only_extension_config(render([p], modules={p.module: ModuleFailed("sha256 mismatch")}))
    assert config.name == "extensions.istio.io/wasmplugin/default.p"
    if plugin_type is PluginType.HTTP:
        assert config.typed_config.type_url == HTTP_RBAC_TYPE
        return unpack(config.typed_config, http_rbac_pb2.RBAC)
    assert config.typed_config.type_url == NETWORK_RBAC_TYPE
    return unpack(config.typed_config, network_rbac_pb2.RBAC)


@pytest.mark.parametrize("strategy", [FailStrategy.FAIL_CLOSE, FailStrategy.FAIL_RELOAD])
def test_a_failed_module_denies_everything_unless_fail_open(strategy: FailStrategy) -> None:
    rbac = failed_module_filter(strategy)
    assert rbac.HasField("rules")
    assert len(rbac.rules.policies) == 0
    assert rbac.rules_stat_prefix == "wasm-default-deny"


def test_a_failed_fail_open_module_allows_everything() -> None:
    rbac = failed_module_filter(FailStrategy.FAIL_OPEN)
    assert not rbac.HasField("rules")
    assert rbac.rules_stat_prefix == "wasm-default-allow"


@pytest.mark.parametrize(("strategy", "denies"), [(FailStrategy.FAIL_CLOSE, True), (FailStrategy.FAIL_OPEN, False)])
def test_a_failed_network_module_gets_a_network_rbac_stand_in(strategy: FailStrategy, denies: bool) -> None:
    rbac = failed_module_filter(strategy, PluginType.NETWORK)
    assert rbac.HasField("rules") is denies
    assert len(rbac.rules.policies) == 0
    assert rbac.stat_prefix == ("wasm-default-deny" if denies else "wasm-default-allow")


def test_a_pending_module_has_no_extension_config_but_the_listener_waits_for_it() -> None:
    pending, done = plugin("pending"), plugin("done")
    resources = render([pending, done], modules=ready(done))
    assert [c.name for c in resources.extension_configs] == ecds("default.done")
    (listener,) = resources.listeners
    assert http_filter_names(listener) == [*ecds("default.done", "default.pending"), ROUTER]


def test_network_plugins_become_listener_filters_before_the_connection_manager() -> None:
    network = plugin("tcp-filter", type=PluginType.NETWORK, phase=Phase.AUTHN)
    http = plugin("http-filter", phase=Phase.AUTHN)
    resources = render([network, http])
    (listener,) = resources.listeners
    filters = listener_filters(listener)
    assert [f.name for f in filters] == [*ecds("default.tcp-filter"), HCM_NAME]
    assert list(filters[0].config_discovery.type_urls) == [NETWORK_WASM_TYPE, NETWORK_RBAC_TYPE]
    assert http_filter_names(listener) == [*ecds("default.http-filter"), ROUTER]
    by_name = {c.name: c.typed_config for c in resources.extension_configs}
    assert by_name[ecds("default.tcp-filter")[0]].type_url == NETWORK_WASM_TYPE
    assert unpack(by_name[ecds("default.tcp-filter")[0]], network_wasm_pb2.Wasm).config.name == "default.tcp-filter"
    assert by_name[ecds("default.http-filter")[0]].type_url == WASM_TYPE


def test_a_tcp_port_gets_network_plugins_and_a_tcp_proxy() -> None:
    plugins = [plugin("tcp-filter", type=PluginType.NETWORK), plugin("http-filter")]
    (listener,) = render(plugins, [sidecar("db", ports=(port(5432, protocol="TCP"),))]).listeners
    assert [f.name for f in listener_filters(listener)] == [
        *ecds("default.tcp-filter"),
        "envoy.filters.network.tcp_proxy",
    ]


def test_env_vars_map_to_key_values_and_host_env_keys() -> None:
    env = (
        EnvVar("TOKEN", False, "secret"),
        EnvVar("POD_NAME", True, ""),
        EnvVar("MODE", False, "strict"),
        EnvVar("NODE", True, ""),
    )
    variables = wasm_plugin_config(render([plugin("p", env=env)])).vm_config.environment_variables
    assert dict(variables.key_values) == {"TOKEN": "secret", "MODE": "strict"}
    assert list(variables.host_env_keys) == ["POD_NAME", "NODE"]


def test_local_module_delivery_uses_a_file_name() -> None:
    settings = TranslateSettings(module_delivery="local", local_module_dir="/var/lib/modules/")
    code = wasm_plugin_config(render([plugin("p")], settings=settings)).vm_config.code
    assert code.WhichOneof("specifier") == "local"
    assert code.local.filename == f"/var/lib/modules/{SHA}.wasm"


# --- snapshot versions -------------------------------------------------------------------------------------


def snapshot_version(plugins: list[WasmPlugin], modules: Mapping[ModuleKey, ModuleStatus] | None = None) -> str:
    resources = render(plugins, [sidecar("web", ports=(port(8080), port(9090)))], modules=modules)
    return Snapshot.of(
        {
            CLUSTER: resources.clusters,
            LISTENER: resources.listeners,
            EXTENSION_CONFIG: resources.extension_configs,
        }
    ).version


def two_plugins() -> list[WasmPlugin]:
    return [
        plugin("a", phase=Phase.STATS, priority=5, plugin_config='{"x":1}', env=(EnvVar("A", False, "1"),)),
        plugin("b", phase=Phase.STATS, priority=3, match=(TrafficSelector(WorkloadMode.SERVER, (9090,)),)),
    ]


def test_equal_inputs_give_equal_snapshot_versions() -> None:
    assert snapshot_version(two_plugins()) == snapshot_version(two_plugins())
    assert snapshot_version(two_plugins()) == snapshot_version(list(reversed(two_plugins())))


@pytest.mark.parametrize(
    "change",
    [
        {"plugin_config": '{"x":2}'},
        {"priority": 1},
        {"phase": Phase.UNSPECIFIED_PHASE},
        {"fail_strategy": FailStrategy.FAIL_OPEN},
        {"plugin_name": "other-root"},
        {"env": (EnvVar("A", False, "2"),)},
        {"match": (TrafficSelector(WorkloadMode.SERVER, (8080,)),)},
    ],
    ids=lambda change: next(iter(change)),
)
def test_one_changed_field_changes_the_snapshot_version(change: dict) -> None:
    first, second = two_plugins()
    assert snapshot_version([replace(first, **change), second]) != snapshot_version([first, second])


def test_a_module_becoming_ready_changes_the_snapshot_version() -> None:
    plugins = two_plugins()
    pending = {plugins[0].module: ModuleReady(SHA, 1024)}
    assert snapshot_version(plugins, pending) != snapshot_version(plugins)
    failed = {**ready(*plugins), plugins[1].module: ModuleFailed("unreachable")}
    assert snapshot_version(plugins, failed) != snapshot_version(plugins)


def test_inline_modules_are_sent_inside_the_config() -> None:
    p = plugin("inline")
    config = Config(plugins=(p,), sidecars=(sidecar("web"),))
    resources = translate(config, proxy(), ready(p), SETTINGS, code={SHA: b"\0asm module"}.get)
    [extension] = resources.extension_configs
    code = unpack(extension.typed_config, http_wasm_pb2.Wasm).config.vm_config.code  # type: ignore[attr-defined]
    assert code.WhichOneof("specifier") == "local"
    assert code.local.inline_bytes == b"\0asm module"


def test_retired_plugins_get_a_pass_through_config() -> None:
    resources = translate(
        Config(),
        proxy(),
        {},
        SETTINGS,
        retired={
            "extensions.istio.io/wasmplugin/default.gone": PluginType.HTTP,
            "extensions.istio.io/wasmplugin/default.tcp": PluginType.NETWORK,
        },
    )
    by_name = {c.name: c.typed_config for c in resources.extension_configs}
    http_filter = unpack(by_name["extensions.istio.io/wasmplugin/default.gone"], http_rbac_pb2.RBAC)
    network_filter = unpack(by_name["extensions.istio.io/wasmplugin/default.tcp"], network_rbac_pb2.RBAC)
    assert not http_filter.HasField("rules") and not network_filter.HasField("rules")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        ("0.0.0.0:9000", "127.0.0.1"),
        (":9000", "127.0.0.1"),
        ("[::]:9000", "::1"),
        ("[fd00::5]:9000", "fd00::5"),
        ("10.1.2.3:9000", "10.1.2.3"),
    ],
)
def test_an_unspecified_default_endpoint_means_the_workload_beside_the_proxy(endpoint: str, address: str) -> None:
    resources = render([], [sidecar("web", ports=(port(8080, endpoint=endpoint),))])
    upstream = next(c for c in resources.clusters if c.name == "inbound|8080||")
    socket = upstream.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (socket.address, socket.port_value) == (address, 9000)
