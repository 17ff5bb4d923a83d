"""Istio's rules for where a plugin runs, shown by a real Envoy in front of a real httpbin: CLIENT-side
plugins on Sidecar egress listeners and on gateways, a plugin calling a ServiceEntry's `outbound|PORT||HOST`
cluster, and the filter order of equal priorities across namespaces. Each case names the Istio source it
reproduces."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import (
    ORDER_MARKER_WASM,
    PLUGINS,
    ROUTER,
    EnvoyProcess,
    Process,
    free_port,
    http_get,
    start_control_plane,
    start_envoy,
    wait_for,
)

CALLOUT_WASM = PLUGINS / "callout" / "plugin.wasm"
SERVICE_HOST = "httpbin.example.com"


def document(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    api_version = "extensions.istio.io/v1alpha1" if kind == "WasmPlugin" else "networking.istio.io/v1"
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def marker(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    """The order-marker plugin: appends `name` to x-plugin-order on the request and the response."""
    return document(
        "WasmPlugin",
        name,
        namespace,
        {"url": f"file://{ORDER_MARKER_WASM}", "pluginName": "order-marker", "pluginConfig": {"name": name}, **spec},
    )


def httpbin_service(port: int, httpbin_port: int, namespace: str = "default") -> dict[str, Any]:
    """httpbin as a ServiceEntry: reached as SERVICE_HOST:`port`, served on loopback at `httpbin_port`."""
    return document(
        "ServiceEntry",
        "httpbin",
        namespace,
        {
            "hosts": [SERVICE_HOST],
            "ports": [{"number": port, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "endpoints": [{"address": "127.0.0.1", "ports": {"http": httpbin_port}}],
        },
    )


def sidecar(
    namespace: str, inbound: int, httpbin_port: int, egress: int | None = None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ingress": [
            {
                "port": {"number": inbound, "protocol": "HTTP", "name": "http"},
                "bind": "127.0.0.1",
                "defaultEndpoint": f"127.0.0.1:{httpbin_port}",
            }
        ]
    }
    if egress is not None:
        spec["egress"] = [
            {"port": {"number": egress, "protocol": "HTTP", "name": "http"}, "hosts": [f"./{SERVICE_HOST}"]}
        ]
    if labels:
        spec["workloadSelector"] = {"labels": labels}
    return document("Sidecar", "proxy", namespace, spec)


def start(
    tmp_path: Path,
    processes: list[Process],
    documents: list[dict[str, Any]],
    node_id: str = "proxy-1",
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    delta: bool = False,
) -> EnvoyProcess:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "config.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    control_plane = start_control_plane(processes, config_dir, tmp_path)
    return start_envoy(
        processes, tmp_path, control_plane.xds_port, node_id, namespace=namespace, labels=labels, delta=delta
    )


def order(port: int, host: str | None = None) -> tuple[str, str]:
    """What the order-marker plugins wrote: on the request httpbin echoed, and on the response."""
    response = http_get(port, "/headers", headers={"Host": host} if host else None)
    assert response.status == 200, response
    return response.json()["headers"].get("X-Plugin-Order", ""), response.headers.get("x-plugin-order", "")


@pytest.mark.parametrize("protocol", ["sotw", "delta"])
def test_client_plugins_run_on_the_egress_listener_and_server_plugins_on_the_inbound_one(
    tmp_path: Path, processes: list[Process], httpbin_port: int, protocol: str
) -> None:
    # pilot/pkg/model/extensions.go, workloadModeForListenerClass and matchMode: sidecar outbound listeners
    # are CLIENT, inbound ones SERVER; UNDEFINED/CLIENT_AND_SERVER take both.
    inbound, egress = free_port(), free_port()
    envoy = start(
        tmp_path,
        processes,
        [
            sidecar("default", inbound, httpbin_port, egress=egress),
            httpbin_service(egress, httpbin_port),
            marker("client", priority=30, match=[{"mode": "CLIENT"}]),
            marker("both", priority=20),
            marker("server", priority=10, match=[{"mode": "SERVER"}]),
            marker("client-other-port", priority=5, match=[{"mode": "CLIENT", "ports": [{"number": inbound}]}]),
        ],
        delta=protocol == "delta",
    )
    egress_listener = f"127.0.0.1_{egress}"
    wait_for(lambda: envoy.http_filters(egress_listener), what="the egress listener")
    assert envoy.http_filters(egress_listener) == [
        "extensions.istio.io/wasmplugin/default.client",
        "extensions.istio.io/wasmplugin/default.both",
        ROUTER,
    ]
    assert envoy.http_filters(f"inbound|{inbound}") == [
        "extensions.istio.io/wasmplugin/default.both",
        "extensions.istio.io/wasmplugin/default.server",
        ROUTER,
    ]
    # The egress listener routes by host to the ServiceEntry's cluster, which reaches httpbin.
    assert wait_for(lambda: order(egress, SERVICE_HOST)[0] == "client,both", what="client plugins") is True
    assert order(egress, SERVICE_HOST) == ("client,both", "both,client")
    assert order(inbound) == ("both,server", "server,both")
    clusters = [
        c["cluster"]["name"]
        for config in envoy.config_dump()["configs"]
        for c in config.get("dynamic_active_clusters", [])
    ]
    assert f"outbound|{egress}||{SERVICE_HOST}" in clusters


def test_a_gateway_runs_client_plugins_that_target_it_and_not_server_ones(
    tmp_path: Path, processes: list[Process], httpbin_port: int
) -> None:
    # pilot/pkg/model/extensions.go, workloadModeForListenerClass: ListenerClassGateway is CLIENT.
    # pilot/pkg/model/policyattachment.go, ShouldAttachPolicy: a gateway.networking.k8s.io/Gateway targetRef
    # selects the proxies labelled with that gateway's name, in the plugin's namespace.
    inbound = free_port()
    gateway = "edge"
    target = {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway}]}
    envoy = start(
        tmp_path,
        processes,
        [
            sidecar("gateways", inbound, httpbin_port),
            marker("gw-client", "gateways", priority=3, match=[{"mode": "CLIENT"}], **target),
            marker("gw-any", "gateways", priority=2, **target),
            marker("gw-server", "gateways", priority=1, match=[{"mode": "SERVER"}], **target),
            marker(
                "other-gateway",
                "gateways",
                targetRefs=[{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "internal"}],
            ),
        ],
        node_id="router~127.0.0.1~edge-1.gateways~gateways.svc.cluster.local",
        namespace="gateways",
        labels={"gateway.networking.k8s.io/gateway-name": gateway},
    )
    wait_for(lambda: order(inbound)[0] == "gw-client,gw-any", what="the gateway's plugins")
    assert order(inbound) == ("gw-client,gw-any", "gw-any,gw-client")
    assert envoy.http_filters(f"inbound|{inbound}") == [
        "extensions.istio.io/wasmplugin/gateways.gw-client",
        "extensions.istio.io/wasmplugin/gateways.gw-any",
        ROUTER,
    ]


def test_a_plugin_calls_httpbin_through_the_service_entry_cluster(
    tmp_path: Path, processes: list[Process], httpbin_port: int
) -> None:
    # Istio's sidecars have an `outbound|PORT||HOST` cluster per ServiceEntry host and port
    # (pilot/pkg/model/service.go BuildSubsetKey), which a plugin names in dispatch_http_call.
    inbound, service_port = free_port(), free_port()
    cluster = f"outbound|{service_port}||{SERVICE_HOST}"
    callout = document(
        "WasmPlugin",
        "callout",
        "default",
        {
            "url": f"file://{CALLOUT_WASM}",
            "pluginName": "callout",
            "pluginConfig": {"cluster": cluster, "authority": SERVICE_HOST, "path": "/status/418"},
        },
    )
    broken = document(
        "WasmPlugin",
        "callout-nowhere",
        "default",
        {
            "url": f"file://{CALLOUT_WASM}",
            "pluginName": "callout",
            "priority": -1,
            "pluginConfig": {"cluster": "outbound|1||nowhere.example.com", "header": "x-nowhere"},
        },
    )
    start(
        tmp_path,
        processes,
        [sidecar("default", inbound, httpbin_port), httpbin_service(service_port, httpbin_port), callout, broken],
    )

    def answered() -> Any:
        response = http_get(inbound, "/headers")
        return response if response.headers.get("x-callout-status") else None

    response = wait_for(answered, what="the callout plugin to run")
    # 418 comes from httpbin's /status/418 only: the call went through the ServiceEntry's cluster.
    assert response.headers["x-callout-status"] == "418"
    assert response.json()["headers"]["X-Callout-Status"] == "418"
    # A cluster the proxy does not have is refused at once: the plugin sees the call fail.
    assert response.headers["x-nowhere"] == "no-cluster"


def test_equal_priorities_run_the_proxy_namespace_before_the_root_namespace(
    tmp_path: Path, processes: list[Process], httpbin_port: int
) -> None:
    # pilot/pkg/model/push_context.go, WasmPluginsByListenerInfo: plugins are listed from the proxy's
    # namespace first, then the root namespace, and sorted stably by priority only.
    inbound = free_port()
    envoy = start(
        tmp_path,
        processes,
        [
            sidecar("prod", inbound, httpbin_port),
            # Named so that neither namespace order nor name order gives the expected order by accident.
            marker("aaa-root", "istio-system", priority=10),
            marker("zzz-prod", "prod", priority=10),
            marker("mmm-prod", "prod", priority=10),
            marker("high-root", "istio-system", priority=20),
            marker("unset-prod", "prod"),
            marker("unset-root", "istio-system"),
        ],
        namespace="prod",
    )
    expected = ["high-root", "mmm-prod", "zzz-prod", "aaa-root", "unset-prod", "unset-root"]
    wait_for(lambda: order(inbound)[0].count(",") == len(expected) - 1, what="every plugin to run")
    request_order, response_order = order(inbound)
    assert request_order.split(",") == expected
    assert response_order.split(",") == list(reversed(expected))
    assert envoy.http_filters(f"inbound|{inbound}")[:-1] == [
        f"extensions.istio.io/wasmplugin/{'istio-system' if name.endswith('root') else 'prod'}.{name}"
        for name in expected
    ]


def test_a_fail_open_plugin_whose_module_is_on_its_way_holds_neither_start_up_nor_requests(
    tmp_path: Path, processes: list[Process], httpbin_port: int
) -> None:
    # Istio's agent puts the allow-all RBAC stand-in (wasm-default-allow) in place of a FAIL_OPEN plugin whose
    # module cannot be had (pkg/wasm/convert.go MaybeConvertWasmExtensionConfig), after its fetch gives up;
    # here it serves at once, without waiting for the fetch, and holds neither start-up nor the listener.
    inbound = free_port()
    with socket.socket() as silent:  # accepts connections and never answers: the fetch stays under way
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/plugin.wasm"
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        (config_dir / "config.yaml").write_text(
            yaml.safe_dump_all(
                [
                    sidecar("default", inbound, httpbin_port),
                    document("WasmPlugin", "slow", "default", {"url": url, "failStrategy": "FAIL_OPEN"}),
                ]
            )
        )
        # /ready answers while the module is still being fetched (start-up waits up to 30 s otherwise).
        control_plane = start_control_plane(processes, config_dir, tmp_path)
        [module] = control_plane.status()["modules"]
        assert module["state"] == "fetching", module
        envoy = start_envoy(processes, tmp_path, control_plane.xds_port, "proxy-1")
        response = wait_for(lambda: http_get(inbound, "/status/200"), what="the listener to serve")
        assert response.status == 200
        assert envoy.http_filters(f"inbound|{inbound}") == ["extensions.istio.io/wasmplugin/default.slow", ROUTER]
        rbac = envoy.extension_configs()["extensions.istio.io/wasmplugin/default.slow"]
        assert rbac["@type"].endswith("RBAC") and rbac.get("rules_stat_prefix") == "wasm-default-allow"
        # /debug/config says where each plugin runs on the connected proxies.
        [attachment] = control_plane.status()["attachment"]
        assert attachment["plugin"] == "default/slow"
        assert attachment["attached"] == [{"proxy": "default/{}", "listener": f"inbound|{inbound}"}]
