"""A WasmPlugin written for Istio 1.29 means the same here: where it attaches, in which order, the JSON
its plugin reads, how its YAML is read, and which documents are refused. Each case names the Istio (or
go-yaml, Go) source it comes from. Documents go through the real loader; resources through `translate`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from controlplane.model import (
    Config,
    FailStrategy,
    ModuleKey,
    ModuleReady,
    ModuleStatus,
    ProxyClass,
    labels_from,
)
from controlplane.source.directory import LoadedDirectory, load_directory
from controlplane.source.go_json import go_float, go_string
from controlplane.source.yaml_documents import parse_yaml
from controlplane.translate.attachment import attachment_report, unattachable_plugins
from controlplane.translate.resources import ProxyResources, TranslateSettings, translate
from controlplane.translate.selection import GATEWAY_NAME_LABEL, select_plugins

ROOT = "istio-system"
SHA = "cd" * 32
HCM = "envoy.filters.network.http_connection_manager"


def load(tmp_path: Path, *documents: str) -> LoadedDirectory:
    (tmp_path / "config.yaml").write_text("\n---\n".join(textwrap.dedent(d) for d in documents))
    return load_directory([str(tmp_path)])


def plugin(name: str, spec: str = "", namespace: str = "default") -> str:
    body = textwrap.indent(textwrap.dedent(spec), "  ")
    return (
        f"apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: {name}\n"
        f"  namespace: {namespace}\nspec:\n  url: oci://example.com/{name}:1\n{body}"
    )


def sidecar(spec: str, namespace: str = "default", name: str = "proxy") -> str:
    body = textwrap.indent(textwrap.dedent(spec), "  ")
    return f"apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{body}"


def service_entry(spec: str, name: str = "svc", namespace: str = "default") -> str:
    body = textwrap.indent(textwrap.dedent(spec), "  ")
    return (
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n"
        f"  namespace: {namespace}\nspec:\n{body}"
    )


INGRESS_8080 = """
ingress:
- port: {number: 8080, protocol: HTTP, name: http}
  defaultEndpoint: 127.0.0.1:9000
"""


def ready(config: Config) -> dict[ModuleKey, ModuleStatus]:
    return {p.module: ModuleReady(SHA, 10) for p in config.plugins}


def resources(loaded: LoadedDirectory, proxy: ProxyClass) -> ProxyResources:
    assert loaded.errors == (), loaded.errors
    return translate(loaded.config, proxy, ready(loaded.config), TranslateSettings(root_namespace=ROOT))


def filters_by_listener(result: ProxyResources) -> dict[str, list[str]]:
    out = {}
    for listener in result.listeners:
        (chain,) = listener.filter_chains
        terminal = chain.filters[-1]
        if terminal.name != HCM:
            out[listener.name] = [f.name.rpartition("/")[2] for f in chain.filters[:-1]]
            continue
        manager = hcm_pb2.HttpConnectionManager()
        terminal.typed_config.Unpack(manager)
        out[listener.name] = [f.name.rpartition("/")[2] for f in manager.http_filters[:-1]]
    return out


def proxy(namespace: str = "default", gateway: bool = False, **labels: str) -> ProxyClass:
    return ProxyClass(namespace, labels_from(labels), gateway=gateway)


def errors(loaded: LoadedDirectory) -> list[tuple[str, str]]:
    return [(e.field, e.reason) for e in loaded.errors]


# --- 1. gateways are CLIENT-side ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "on_gateway", "on_sidecar_inbound"),
    [
        # pilot/pkg/model/extensions.go, workloadModeForListenerClass + matchMode
        ("CLIENT", True, False),
        ("SERVER", False, True),
        ("CLIENT_AND_SERVER", True, True),
        ("UNDEFINED", True, True),
    ],
)
def test_every_gateway_listener_is_client_side(
    tmp_path: Path, mode: str, on_gateway: bool, on_sidecar_inbound: bool
) -> None:
    loaded = load(tmp_path, sidecar(INGRESS_8080), plugin("p", f"match:\n- mode: {mode}"))
    assert filters_by_listener(resources(loaded, proxy(gateway=True))) == {"inbound|8080": ["default.p"] * on_gateway}
    assert filters_by_listener(resources(loaded, proxy())) == {"inbound|8080": ["default.p"] * on_sidecar_inbound}


def test_a_proxy_is_a_gateway_by_istio_node_id_or_gateway_name_label() -> None:
    # Istio's proxies say their type in the node id: router~IP~POD.NS~NS.svc.cluster.local
    # (pilot/pkg/model/context.go ParseServiceNodeWithMetadata); Gateway API deployments carry the label.
    from envoy.config.core.v3 import base_pb2

    from controlplane.node import proxy_class

    def node(node_id: str, labels: dict[str, str]) -> base_pb2.Node:
        message = base_pb2.Node(id=node_id)
        message.metadata.update({"NAMESPACE": "gw", "LABELS": labels})
        return message

    assert proxy_class(node("router~10.0.0.1~edge-1.gw~gw.svc.cluster.local", {"istio": "ingressgateway"})).gateway
    assert proxy_class(node("edge-1", {GATEWAY_NAME_LABEL: "edge"})).gateway
    assert not proxy_class(node("sidecar~10.0.0.2~web-1.gw~gw.svc.cluster.local", {"app": "web"})).gateway


# --- 2 and 3. Sidecar egress listeners and ServiceEntry clusters ---------------------------------------------

EGRESS = """
ingress:
- port: {number: 8080, protocol: HTTP, name: http}
  defaultEndpoint: 127.0.0.1:9000
egress:
- port: {number: 9080, protocol: HTTP, name: http}
  hosts: [./api.example.com, "*/db.example.com"]
- hosts: ["./*"]
"""
API = """
hosts: [api.example.com]
ports:
- {number: 9080, name: http, protocol: HTTP}
- {number: 9443, name: grpc, protocol: GRPC, targetPort: 50051}
resolution: STATIC
endpoints:
- address: 10.0.0.1
  ports: {http: 8000}
- address: 10.0.0.2
"""


def clusters(result: ProxyResources) -> dict[str, cluster_pb2.Cluster]:
    return {c.name: c for c in result.clusters}


def endpoints(cluster: cluster_pb2.Cluster) -> list[tuple[str, int]]:
    return [
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for group in cluster.load_assignment.endpoints
        for e in group.lb_endpoints
    ]


def test_an_egress_entry_becomes_a_client_listener_routing_to_service_entry_clusters(tmp_path: Path) -> None:
    # Sidecar egress (networking/v1alpha3/sidecar.proto IstioEgressListener: port, bind, hosts as
    # namespace/dnsName); clusters named as pilot/pkg/model/service.go BuildSubsetKey names them.
    loaded = load(
        tmp_path,
        sidecar(EGRESS),
        service_entry(API, "api"),
        service_entry(
            "hosts: [db.example.com]\nports: [{number: 9080, name: tcp, protocol: HTTP}]\nresolution: DNS", "db", "data"
        ),
        service_entry(
            "hosts: [other.example.com]\nports: [{number: 9080, name: http}]\nresolution: DNS", "other", "elsewhere"
        ),
        plugin("client", "match: [{mode: CLIENT}]"),
        plugin("server", "match: [{mode: SERVER}]"),
    )
    result = resources(loaded, proxy())
    assert filters_by_listener(result) == {"inbound|8080": ["default.server"], "127.0.0.1_9080": ["default.client"]}
    egress = next(listener for listener in result.listeners if listener.name == "127.0.0.1_9080")
    assert (egress.address.socket_address.address, egress.address.socket_address.port_value) == ("127.0.0.1", 9080)
    manager = hcm_pb2.HttpConnectionManager()
    egress.filter_chains[0].filters[-1].typed_config.Unpack(manager)
    routes = {tuple(v.domains): v.routes[0].route.cluster for v in manager.route_config.virtual_hosts}
    assert routes == {
        ("api.example.com", "api.example.com:9080"): "outbound|9080||api.example.com",
        ("db.example.com", "db.example.com:9080"): "outbound|9080||db.example.com",
    }
    by_name = clusters(result)
    # other.example.com (namespace elsewhere) is named by no egress host, not even the catch-all ./*: no
    # cluster, as with Istio's Sidecar scoping.
    assert set(by_name) == {
        "inbound|8080||",
        "outbound|9080||api.example.com",
        "outbound|9443||api.example.com",
        "outbound|9080||db.example.com",
    }
    # Endpoint ports map by port name, else targetPort, else the port number.
    assert endpoints(by_name["outbound|9080||api.example.com"]) == [("10.0.0.1", 8000), ("10.0.0.2", 9080)]
    assert endpoints(by_name["outbound|9443||api.example.com"]) == [("10.0.0.1", 50051), ("10.0.0.2", 50051)]
    assert by_name["outbound|9080||api.example.com"].type == cluster_pb2.Cluster.STATIC
    assert by_name["outbound|9443||api.example.com"].typed_extension_protocol_options  # gRPC speaks h2
    assert by_name["outbound|9080||db.example.com"].type == cluster_pb2.Cluster.STRICT_DNS
    assert endpoints(by_name["outbound|9080||db.example.com"]) == [("db.example.com", 9080)]


@pytest.mark.parametrize(
    ("resolution", "cluster_type"),
    [
        ("STATIC", cluster_pb2.Cluster.STATIC),
        ("DNS", cluster_pb2.Cluster.STRICT_DNS),
        ("DNS_ROUND_ROBIN", cluster_pb2.Cluster.LOGICAL_DNS),
        ("NONE", None),
    ],
)
def test_service_entry_resolution_chooses_the_cluster_type(tmp_path: Path, resolution: str, cluster_type: Any) -> None:
    endpoints_yaml = "" if resolution == "NONE" else "endpoints: [{address: 10.0.0.9}]\n"
    if resolution == "NONE":
        spec = "hosts: [x.example.com]\nports: [{number: 80, name: http}]\nresolution: NONE\n"
    else:
        spec = (
            f"hosts: [x.example.com]\nports: [{{number: 80, name: http}}]\nresolution: {resolution}\n{endpoints_yaml}"
        )
    result = resources(load(tmp_path, service_entry(spec)), proxy())
    found = clusters(result).get("outbound|80||x.example.com")
    assert (found.type if found else None) == cluster_type


def test_export_to_limits_which_namespaces_get_a_service(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        service_entry(
            "hosts: [a.example.com]\nports: [{number: 80, name: http}]\nresolution: DNS\nexportTo: ['.']", "a", "team"
        ),
        service_entry(
            "hosts: [b.example.com]\nports: [{number: 80, name: http}]\nresolution: DNS\nexportTo: [apps]", "b", "team"
        ),
    )

    def names(namespace: str) -> list[str]:
        return sorted(n for n in clusters(resources(loaded, proxy(namespace))) if n.startswith("outbound"))

    assert names("team") == ["outbound|80||a.example.com"]
    assert names("apps") == ["outbound|80||b.example.com"]
    assert names("other") == []


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        # pkg/config/validation/validation.go ValidateServiceEntry
        (
            "ports: [{number: 80, name: http}]\nresolution: DNS",
            "spec.hosts",
            "service entry must have at least one host",
        ),
        ("hosts: ['*']\nports: [{number: 80, name: http}]", "spec.hosts[0]", "invalid host '*'"),
        (
            "hosts: [a.example.com]\nports: [{number: 80, name: http}, {number: 80, name: web}]\nresolution: DNS",
            "spec.ports[1].number",
            "service entry port 80 already defined",
        ),
        (
            "hosts: [a.example.com]\nports: [{number: 80, name: http}]\nresolution: NONE\nendpoints: [{address: 10.0.0.1}]",
            "spec.endpoints",
            "no endpoints should be provided for resolution type NONE",
        ),
        (
            "hosts: [a.example.com]\nports: [{number: 80, name: http}]\nresolution: DNS_ROUND_ROBIN\n"
            "endpoints: [{address: a.internal}, {address: b.internal}]",
            "spec.endpoints",
            "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN",
        ),
        (
            "hosts: [a.example.com]\nports: [{number: 80, name: http}]\nresolution: STATIC\n"
            "endpoints: [{address: 10.0.0.1, ports: {web: 8080}}]",
            "spec.endpoints[0].ports.web",
            "endpoint port 'web' is not defined by the service entry",
        ),
        (
            "hosts: [a.example.com]\nports: [{number: 80, name: http}]\nresolution: DNS\nexportTo: ['~', apps]",
            "spec.exportTo",
            "~ (no namespace) cannot be combined with others",
        ),
    ],
)
def test_invalid_service_entries_are_refused(tmp_path: Path, spec: str, field: str, reason: str) -> None:
    assert (field, reason) in errors(load(tmp_path, service_entry(spec)))


# --- 4. targetRef group and kind ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        # pkg/config/validation/validation.go validatePolicyTargetReference, allowedTargetRefs
        ("{group: gateway.networking.k8s.io, kind: Gateway, name: edge}", None),
        ("{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio}", None),
        ("{kind: Service, name: reviews}", None),
        ("{group: core, kind: Service, name: reviews}", None),
        ("{group: networking.istio.io, kind: ServiceEntry, name: ext}", None),
        ("{kind: Gateway, name: edge}", ("spec.targetRefs[0]", "but was core/Gateway")),
        (
            "{group: networking.istio.io, kind: Gateway, name: edge}",
            ("spec.targetRefs[0]", "but was networking.istio.io/Gateway"),
        ),
        ("{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}", ("spec.targetRefs[0]", "HTTPRoute")),
        # The CRD: namespace must be empty (CEL self.size() == 0), even when it names the plugin's own.
        (
            "{group: gateway.networking.k8s.io, kind: Gateway, name: edge, namespace: default}",
            ("spec.targetRefs[0].namespace", "cross namespace"),
        ),
        ("{group: Gateway.Networking, kind: Gateway, name: edge}", ("spec.targetRefs[0].group", "is not an API group")),
        (
            "{group: gateway.networking.k8s.io, kind: 9Gateway, name: edge}",
            ("spec.targetRefs[0].kind", "is not a kind name"),
        ),
    ],
)
def test_target_ref_group_and_kind_are_checked(tmp_path: Path, ref: str, problem: tuple[str, str] | None) -> None:
    found = errors(load(tmp_path, plugin("p", f"targetRefs: [{ref}]")))
    if problem is None:
        assert found == []
    else:
        assert any(field == problem[0] and problem[1] in reason for field, reason in found), found


def test_target_refs_select_gateways_of_their_own_namespace_by_name(tmp_path: Path) -> None:
    # pilot/pkg/model/policyattachment.go ShouldAttachPolicy: a non-gateway proxy ignores targetRef
    # policies; a gateway takes a Gateway targetRef of its own namespace and name; a root-namespace
    # plugin with a targetRef does not cross namespaces; a gateway still takes selector plugins
    # (ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY defaults to true).
    gateway_ref = "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]"
    loaded = load(
        tmp_path,
        plugin("edge", gateway_ref, namespace="gw"),
        plugin("root-edge", gateway_ref, namespace=ROOT),
        plugin("selector", "selector: {matchLabels: {app: edge}}", namespace="gw"),
        plugin("service", "targetRefs: [{kind: Service, name: edge}]", namespace="gw"),
    )
    assert loaded.errors == ()
    edge = proxy("gw", gateway=True, app="edge", **{GATEWAY_NAME_LABEL: "edge"})
    other = proxy("gw", gateway=True, app="edge", **{GATEWAY_NAME_LABEL: "internal"})
    sidecar_proxy = proxy("gw", app="edge")
    names = lambda p: [x.name for x in select_plugins(loaded.config, p, ROOT)]  # noqa: E731
    assert names(edge) == ["edge", "selector"]
    assert names(other) == ["selector"]
    assert names(sidecar_proxy) == ["selector"]


# --- 5. equal priorities: the proxy's namespace first -----------------------------------------------------


def test_equal_priorities_put_the_proxy_namespace_before_the_root_one(tmp_path: Path) -> None:
    # pilot/pkg/model/push_context.go WasmPluginsByListenerInfo: lookupInNamespaces = proxy namespace, root
    # namespace; sort.SliceStable by priority only. Inside a namespace: name (Istio: creation time).
    loaded = load(
        tmp_path,
        plugin("a", "priority: 5", namespace=ROOT),
        plugin("z", "priority: 5", namespace="prod"),
        plugin("b", "priority: 5", namespace="prod"),
        plugin("top", "priority: 6", namespace=ROOT),
    )
    order = [f"{p.namespace}/{p.name}" for p in select_plugins(loaded.config, proxy("prod"), ROOT)]
    assert order == [f"{ROOT}/top", "prod/b", "prod/z", f"{ROOT}/a"]
    # A proxy of the root namespace has one namespace to list: name order.
    root_order = [p.name for p in select_plugins(loaded.config, proxy(ROOT), ROOT)]
    assert root_order == ["top", "a"]


# --- 6. pluginConfig numbers and strings as Go's encoding/json writes them -----------------------------------


@pytest.mark.parametrize(
    ("number", "text"),
    [
        # encoding/json encode.go floatEncoder: 'f' format for 1e-6 <= |x| < 1e21, else 'e' with
        # e-07 trimmed to e-7; strconv shortest digits.
        (2.0, "2"),
        (429, "429"),
        (0.5, "0.5"),
        (-0.0, "-0"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (123456789012345678901234567890, "1.2345678901234568e+29"),
        (12345678901234567890, "12345678901234567000"),
        (2**53 + 1, "9007199254740992"),
        (0.000001, "0.000001"),
        (0.0000001, "1e-7"),
        (1.5e-10, "1.5e-10"),
        (-2.5e300, "-2.5e+300"),
        (0.1 + 0.2, "0.30000000000000004"),
    ],
)
def test_numbers_are_written_as_go_writes_a_float64(number: float, text: str) -> None:
    assert go_float(number) == text


def test_strings_are_escaped_as_go_escapes_them() -> None:
    # encoding/json encode.go appendString with escapeHTML (json.Marshal's default, used by jsonpb).
    assert go_string('a<b>&"\\\n\t\x01\u2028é') == '"a\\u003cb\\u003e\\u0026\\"\\\\\\n\\t\\u0001\\u2028é"'


def test_plugin_config_reaches_the_plugin_as_istio_writes_it(tmp_path: Path) -> None:
    # pilot/pkg/model/extensions.go buildPluginConfig: protomarshal.ToJSON(plugin.PluginConfig).
    loaded = load(
        tmp_path,
        plugin(
            "p",
            """
            pluginConfig:
              ratio: 2.0
              limit: 10
              big: 12345678901234567890
              tiny: 1.5e-7
              html: "<a href='x'>&</a>"
              nested: {b: [1.0, true, null], a: "é"}
            """,
        ),
    )
    assert loaded.errors == ()
    (value,) = loaded.config.plugins
    assert value.plugin_config == (
        '{"big":12345678901234567000,"html":"\\u003ca href=\'x\'\\u003e\\u0026\\u003c/a\\u003e","limit":10,'
        '"nested":{"a":"é","b":[1,true,null]},"ratio":2,"tiny":1.5e-7}'
    )
    assert json.loads(value.plugin_config)["ratio"] == 2


# --- 7. YAML scalars as go-yaml v2 reads them ---------------------------------------------------------------

SCALARS = [
    # goyaml.v2 resolve.go: resolveMap words, then ParseInt/ParseUint(base 0, underscores dropped),
    # yamlStyleFloat, timestamps kept as text when decoding into interface{}; no base 60.
    ("1e3", 1000.0),
    ("1.5e7", 15000000.0),
    ("-.5", -0.5),
    (".5", 0.5),
    ("1.", 1.0),
    ("1:30", "1:30"),
    ("190:20:30", "190:20:30"),
    ("0o17", 15),
    ("017", 15),
    ("08", 8.0),
    ("0x1F", 31),
    ("0b101", 5),
    ("-0b101", -5),
    ("+12", 12),
    ("1_000", 1000),
    ("18446744073709551615", 18446744073709551615),
    ("y", True),
    ("Y", True),
    ("n", False),
    ("N", False),
    ("yes", True),
    ("off", False),
    ("True", True),
    ("tRUE", "tRUE"),
    ("~", None),
    ("Null", None),
    ("=", "="),
    (".inf", float("inf")),
    ("-.Inf", float("-inf")),
    ("-.nan", "-.nan"),
    ("2025-12-31", "2025-12-31"),
    ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"),
    ("1e", "1e"),
    ("0x", "0x"),
    ("'1e3'", "1e3"),
    ('"y"', "y"),
]


@pytest.mark.parametrize(("written", "expected"), SCALARS)
def test_yaml_scalars_are_read_as_go_yaml_v2_reads_them(written: str, expected: Any) -> None:
    documents, problems = parse_yaml("x.yaml", f"value: {written}\n")
    assert problems == []
    (document,) = documents
    value = document.data["value"]
    assert value == expected and type(value) is type(expected)


def test_a_boolean_key_becomes_its_json_text() -> None:
    # sigs.k8s.io/yaml convertToJSONableObject: bool keys become "true"/"false"; go-yaml v2 reads `y` as true.
    documents, _ = parse_yaml("x.yaml", "y: 1\nn: 2\n1e3: 3\n")
    assert documents[0].data == {"true": 1, "false": 2, "1000": 3}


# --- 8. admission agrees with Istio's CRD and validation both ways -------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        # kubernetes/customresourcedefinitions.gen.yaml (istio/api 1.29), WasmPlugin openAPIV3Schema
        (
            "selector: {matchLabels: {'app*': web}}",
            'spec.selector.matchLabels["app*"]',
            "wildcard not allowed in label key match",
        ),
        (
            "selector: {matchLabels: {app: 'web*'}}",
            "spec.selector.matchLabels.app",
            "wildcard not allowed in label value match",
        ),
        ("selector: {matchLabels: {'': web}}", "spec.selector.matchLabels", "key must not be empty"),
        (f"selector: {{matchLabels: {{app: {'x' * 64}}}}}", "spec.selector.matchLabels.app", "at most 63 characters"),
        ("pluginName: ''", "spec.pluginName", "must not be empty; leave the field out instead"),
        ("imagePullSecret: ''", "spec.imagePullSecret", "must not be empty; leave the field out instead"),
        ("match: [{ports: [{number: 80}, {number: 80}]}]", "spec.match[0].ports[1].number", "port 80 is listed twice"),
        ("plugin_config: {a: 1}", "spec.plugin_config", "unknown field; did you mean 'pluginConfig'?"),
        ("fail_strategy: FAIL_OPEN", "spec.fail_strategy", "unknown field; did you mean 'failStrategy'?"),
        ("vmConfig: {env: [{name: A}, {name: A}]}", "spec.vmConfig.env[1].name", "duplicate variable 'A'"),
        (f"vmConfig: {{env: [{{name: {'A' * 257}}}]}}", "spec.vmConfig.env[0].name", "required, 1 to 256 characters"),
    ],
)
def test_documents_kubectl_would_refuse_are_refused(tmp_path: Path, spec: str, field: str, reason: str) -> None:
    assert (field, reason) in errors(load(tmp_path, plugin("p", spec)))


@pytest.mark.parametrize(
    "spec",
    [
        # The CRD allows any env name of 1-256 characters (pkg/config/validation validateWasmPluginVMConfig).
        "vmConfig: {env: [{name: my-var.with dots, value: x}, {name: 1ST, value: z}]}",
        # Go's url.Parse lower-cases the scheme that the CRD's CEL rule then compares.
        "url: HTTPS://example.com/p.wasm",
        "url: OCI://example.com/p:1",
        "priority: null",
        "selector: {}",
        "targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: edge, namespace: ''}",
    ],
)
def test_documents_istio_accepts_are_accepted(tmp_path: Path, spec: str) -> None:
    text = plugin("p", spec)
    if "url:" in spec:
        text = text.replace("  url: oci://example.com/p:1\n", "")
    loaded = load(tmp_path, text)
    assert loaded.errors == ()
    (value,) = loaded.config.plugins
    assert value.url.split("://")[0] in ("oci", "https")


def test_an_empty_selector_is_a_warning_as_in_istio(tmp_path: Path) -> None:
    # pkg/config/validation/validation.go validateWorkloadSelector: "workload selector specified without labels"
    loaded = load(tmp_path, plugin("p", "selector: {}"))
    assert [w.reason for w in loaded.warnings] == ["workload selector specified without labels: selects every proxy"]


# --- 9. why a plugin does not attach ------------------------------------------------------------------------


def test_the_attachment_report_says_where_a_plugin_runs_and_why_not_elsewhere(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        sidecar(INGRESS_8080),
        plugin("runs", "selector: {matchLabels: {app: web}}"),
        plugin("wrong-label", "selector: {matchLabels: {app: db}}"),
        plugin("client-only", "match: [{mode: CLIENT}]"),
        plugin("other-port", "match: [{ports: [{number: 9090}]}]"),
        plugin("elsewhere", namespace="team"),
        plugin("gateway-only", "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]"),
    )
    report = {e["plugin"]: e for e in attachment_report(loaded.config, [proxy(app="web")], ROOT)}
    web = "default/{app=web}"
    assert report["default/runs"]["attached"] == [{"proxy": web, "listener": "inbound|8080"}]
    assert report["default/wrong-label"]["skipped"] == [
        {"proxy": web, "reason": "selector: the proxy's labels lack app=db"}
    ]
    assert report["default/client-only"]["skipped"] == [
        {"proxy": web, "listener": "inbound|8080", "reason": "match: mode CLIENT (this listener is SERVER-side)"}
    ]
    assert report["default/other-port"]["skipped"] == [
        {"proxy": web, "listener": "inbound|8080", "reason": "match: ports 9090 (this listener is port 8080)"}
    ]
    assert report["team/elsewhere"]["skipped"][0]["reason"].startswith("namespace: the plugin is in 'team'")
    assert report["default/gateway-only"]["skipped"][0]["reason"].startswith("targetRefs: only select Gateway API")


@pytest.mark.integration
def test_validate_warns_about_a_plugin_that_attaches_to_no_listener(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "\n---\n".join([sidecar(INGRESS_8080), plugin("client-only", "match: [{mode: CLIENT}]"), plugin("fine")])
    )
    loaded = load_directory([str(tmp_path)])
    (warning,) = unattachable_plugins(loaded.config, ROOT)
    assert warning.reason == (
        "attaches to no listener of this directory's Sidecars: match: mode CLIENT (this listener is SERVER-side)"
    )
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "validate", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"warning: {warning}" in result.stderr.splitlines()


@pytest.mark.integration
def test_render_prints_the_attachment_of_the_proxy(tmp_path: Path) -> None:
    text = "\n---\n".join([sidecar(INGRESS_8080), plugin("client-only", "match: [{mode: CLIENT}]")])
    (tmp_path / "config.yaml").write_text(text.replace("oci://example.com/client-only:1", "file:///nonexistent/p.wasm"))
    plugin_line = text.splitlines().index("apiVersion: extensions.istio.io/v1alpha1") + 1
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "render", str(tmp_path), "--namespace", "default", "--gateway"],
        capture_output=True,
        text=True,
        check=False,
    )
    rendered = yaml.safe_load(result.stdout)
    assert rendered["attachment"] == [
        {
            "plugin": "default/client-only",
            "source": f"{tmp_path / 'config.yaml'}:{plugin_line}",
            "attached": [{"proxy": "default/{} (gateway)", "listener": "inbound|8080"}],
            "skipped": [],
        }
    ]


# --- 10. FAIL_OPEN plugins do not hold a listener -------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "stand_in"), [("FAIL_OPEN", True), ("FAIL_CLOSE", False)])
def test_a_fail_open_plugin_lets_requests_through_while_its_module_is_fetched(
    tmp_path: Path, strategy: str, stand_in: bool
) -> None:
    # The stand-in is Istio's (pkg/wasm/convert.go createHTTPDefaultFilter: RBAC without rules,
    # wasm-default-allow); FAIL_CLOSE plugins keep the listener warming until their module is there.
    loaded = load(tmp_path, sidecar(INGRESS_8080), plugin("p", f"failStrategy: {strategy}"))
    (value,) = loaded.config.plugins
    assert value.fail_strategy is FailStrategy[strategy]
    result = translate(loaded.config, proxy(), {}, TranslateSettings(root_namespace=ROOT))
    assert filters_by_listener(result) == {"inbound|8080": ["default.p"]}
    if not stand_in:
        assert result.extension_configs == ()  # the listener warms until the module is there
        return
    (config,) = result.extension_configs
    rbac = http_rbac_pb2.RBAC()
    assert config.typed_config.Unpack(rbac)
    assert not rbac.HasField("rules") and rbac.rules_stat_prefix == "wasm-default-allow"
