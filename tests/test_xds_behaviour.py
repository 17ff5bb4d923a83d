"""How the server behaves on the wire, observed through real Envoy proxies and their statistics."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from controlplane.xds.snapshot import CLUSTER
from tests.support import (
    BOTH_PROTOCOLS,
    RATELIMIT_WASM,
    Process,
    Stack,
    burst,
    config_reloads,
    free_port,
    http_get,
    sidecar_yaml,
    start_control_plane,
    start_envoy,
    wait_for,
    wasm_plugin_yaml,
)

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
SETTLE_SECONDS = 1.5
"""How long to watch for something that must not happen: many push round trips on loopback."""


def ratelimit(app: str, requests_per_second: int) -> str:
    return wasm_plugin_yaml(
        f"limit-{app}",
        f"file://{RATELIMIT_WASM}",
        selector={"app": app},
        plugin_name="ratelimit",
        config={"requests_per_second": requests_per_second},
    )


def test_a_listener_envoy_cannot_bind_is_rejected_once_and_the_others_keep_serving(
    tmp_path: Path, httpbin_port: int, processes: list[Process]
) -> None:
    taken, free = free_port(), free_port()
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    sidecar = sidecar_yaml("httpbin", free, httpbin_port, {"app": "httpbin"})
    sidecar += f"""  - port:
      number: {taken}
      protocol: HTTP
      name: http-taken
    bind: 127.0.0.1
    defaultEndpoint: 127.0.0.1:{httpbin_port}
"""
    (config_dir / "sidecar.yaml").write_text(sidecar)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        control_plane = start_control_plane(processes, config_dir, tmp_path)
        envoy = start_envoy(processes, tmp_path, control_plane.xds_port, "httpbin-1", labels={"app": "httpbin"})

        def rejection() -> dict[str, str] | None:
            connections = control_plane.status("proxies")
            state = connections[0]["types"].get(LISTENER) if connections else None
            return state if state and state["error"] else None

        state = wait_for(rejection, what="the NACK to be recorded")
        assert "Address already in use" in state["error"] and str(taken) in state["error"]
        assert http_get(free).status == 200
        rejected = envoy.stats()["listener_manager.lds.update_rejected"]
        time.sleep(SETTLE_SECONDS)
        assert envoy.stats()["listener_manager.lds.update_rejected"] == rejected == 1
        assert "rejected" in control_plane.process.log() and "Address already in use" in control_plane.process.log()
        metrics = control_plane.metrics()
        assert metrics["controlplane_xds_rejections_total", (("type_url", LISTENER),)] == 1
        assert metrics["controlplane_proxies_rejecting", (("type_url", LISTENER),)] == 1
        assert metrics["controlplane_proxies_connected", (("protocol", "sotw"),)] == 1


@BOTH_PROTOCOLS
def test_restarting_the_control_plane_makes_envoy_reload_nothing(
    stack: Stack, tmp_path: Path, processes: list[Process]
) -> None:
    stack.write("limit.yaml", ratelimit("httpbin", 2))
    wait_for(lambda: "who-am-i" in http_get(stack.port).headers, what="the plugin")
    time.sleep(SETTLE_SECONDS)
    before = config_reloads(stack.envoy.stats())

    stack.control_plane.process.stop()
    restarted = start_control_plane(
        processes, stack.config_dir, tmp_path, ports=(stack.control_plane.xds_port, stack.control_plane.http_port)
    )
    wait_for(lambda: restarted.status("proxies"), what="Envoy to reconnect")
    time.sleep(SETTLE_SECONDS)

    assert config_reloads(stack.envoy.stats()) == before
    time.sleep(1.2)
    assert [r.status for r in burst(stack.port, 3)] == [200, 200, 429]


def test_a_change_for_one_proxy_touches_no_other(tmp_path: Path, httpbin_port: int, processes: list[Process]) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    ports = {app: free_port() for app in ("a", "b", "c")}
    for app, port in ports.items():
        (config_dir / f"sidecar-{app}.yaml").write_text(sidecar_yaml(app, port, httpbin_port, {"app": app}))
        (config_dir / f"limit-{app}.yaml").write_text(ratelimit(app, 50))
    control_plane = start_control_plane(processes, config_dir, tmp_path)
    envoys = {app: start_envoy(processes, tmp_path, control_plane.xds_port, app, labels={"app": app}) for app in ports}
    for app, port in ports.items():
        wait_for(lambda port=port: "who-am-i" in http_get(port).headers, what=f"plugin on {app}")
    time.sleep(SETTLE_SECONDS)
    before = {app: config_reloads(envoy.stats()) for app, envoy in envoys.items()}

    (config_dir / "limit-a.yaml").write_text(ratelimit("a", 60))
    name = "extensions.istio.io/wasmplugin/default.limit-a"
    wait_for(lambda: "60" in str(envoys["a"].extension_configs()[name]), what="the change on proxy a")
    time.sleep(SETTLE_SECONDS)

    after = {app: config_reloads(envoy.stats()) for app, envoy in envoys.items()}
    assert after["b"] == before["b"] and after["c"] == before["c"]
    assert after["a"] != before["a"]


def test_a_grpc_port_reaches_its_backend_over_http2(tmp_path: Path, processes: list[Process]) -> None:
    """The backend is the control plane's own xDS port: a real gRPC server, called through Envoy."""
    xds_port, http_port, grpc_port = free_port(), free_port(), free_port()
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    sidecar = sidecar_yaml("grpc", grpc_port, xds_port, {"app": "grpc"}).replace("protocol: HTTP", "protocol: GRPC")
    (config_dir / "sidecar.yaml").write_text(sidecar)
    control_plane = start_control_plane(processes, config_dir, tmp_path, ports=(xds_port, http_port))
    start_envoy(processes, tmp_path, control_plane.xds_port, "grpc-1", labels={"app": "grpc"})
    request = discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="through-envoy"), type_url=CLUSTER)

    def call_through_envoy() -> discovery_pb2.DiscoveryResponse | None:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            try:
                return next(iter(stub.StreamAggregatedResources(iter([request]), timeout=5)))
            except grpc.RpcError:
                return None

    response = wait_for(call_through_envoy, what="a gRPC answer through Envoy")
    # A node without a Sidecar has no cluster: the answer is the empty state of the world.
    assert response.type_url == CLUSTER and response.nonce and response.version_info
