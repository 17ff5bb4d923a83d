"""TLS and mTLS between real Envoys and the control plane, with certificates made here: who is refused,
what each namespace's proxy may read, and certificates rotated under a connected Envoy."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from controlplane.bootstrap import EnvoyTls
from controlplane.xds.snapshot import CLUSTER
from tests.certificates import Authority, Issued, serial_of, spiffe
from tests.support import (
    RATELIMIT_WASM,
    ControlPlaneProcess,
    EnvoyProcess,
    Process,
    free_port,
    http_get,
    sidecar_yaml,
    start_control_plane,
    start_envoy,
    wait_for,
    wasm_plugin_yaml,
)


@dataclass
class Secured:
    authority: Authority
    server: Issued
    proxy_a: Issued
    proxy_b: Issued
    control_plane: ControlPlaneProcess
    config_dir: Path
    port: int
    """The listener port of namespace a's Sidecar."""


def _start(tmp_path: Path, httpbin_port: int, processes: list[Process], mutual: bool) -> Secured:
    authority = Authority(tmp_path / "ca")
    server = authority.issue("controlplane", loopback=True, folder=tmp_path / "server")
    # Each proxy's files in a folder of their own, as a mounted Secret: Envoy watches the folder.
    proxy_a = authority.issue("proxy-a", uris=(spiffe("a"),), folder=tmp_path / "proxy-a")
    proxy_b = authority.issue("proxy-b", uris=(spiffe("b"),), folder=tmp_path / "proxy-b")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    port = free_port()
    (config_dir / "sidecar.yaml").write_text(sidecar_yaml("httpbin", port, httpbin_port, namespace="a"))
    (config_dir / "limit.yaml").write_text(
        wasm_plugin_yaml("limit", f"file://{RATELIMIT_WASM}", namespace="a", plugin_name="ratelimit", config={})
    )
    flags = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    if mutual:
        flags += ["--client-ca", str(authority.cert)]
    control_plane = start_control_plane(processes, config_dir, tmp_path, *flags)
    return Secured(authority, server, proxy_a, proxy_b, control_plane, config_dir, port)


def _envoy(secured: Secured, tmp_path: Path, processes: list[Process], proxy: Issued | None) -> EnvoyProcess:
    tls = EnvoyTls(str(secured.authority.cert), str(proxy.cert), str(proxy.key)) if proxy else None
    if tls is None:
        tls = EnvoyTls(str(secured.authority.cert))
    return start_envoy(processes, tmp_path, secured.control_plane.xds_port, "proxy-a", namespace="a", tls=tls)


def _tls_client(secured: Secured, proxy: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(secured.authority.cert))
    if proxy is not None:
        context.load_cert_chain(str(proxy.cert), str(proxy.key))
    return context


def _server_serial(port: int, context: ssl.SSLContext, alpn: str = "") -> int:
    """The serial of the certificate a new connection to `port` is shown."""
    if alpn:
        context.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return serial_of(ssl.DER_cert_to_PEM_cert(der).encode())


def _module_get(port: int, context: ssl.SSLContext, path: str) -> int | None:
    """The HTTP status of a GET over TLS; None when the server ends the connection without answering (with
    TLS 1.3 the client's handshake completes before the server has checked its certificate)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
                head = tls.recv(64)
    except (ssl.SSLError, ConnectionError):
        return None
    return int(head.split()[1]) if head else None


def _ask_as(secured: Secured, proxy: Issued | None, namespace: str) -> grpc.aio.AioRpcError | None:
    """Opens an ADS stream over TLS (with `proxy`'s certificate, if any) claiming `namespace`; the error it
    ends with, or None when it is answered."""

    async def script() -> grpc.aio.AioRpcError | None:
        credentials = grpc.ssl_channel_credentials(
            secured.authority.cert.read_bytes(),
            proxy.key.read_bytes() if proxy else None,
            proxy.cert.read_bytes() if proxy else None,
        )
        options = [("grpc.ssl_target_name_override", "localhost")]
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{secured.control_plane.xds_port}", credentials, options
        ) as channel:
            node = base_pb2.Node(id=f"asking-as-{namespace}")
            node.metadata.update({"NAMESPACE": namespace})
            request = discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER)
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
                iter([request]), timeout=10
            )
            try:
                async for _ in call:
                    return None
            except grpc.aio.AioRpcError as exc:
                return exc
        return None

    return asyncio.run(script())


def test_mtls_serves_each_proxy_its_own_namespace_only(
    tmp_path: Path, httpbin_port: int, processes: list[Process]
) -> None:
    secured = _start(tmp_path, httpbin_port, processes, mutual=True)
    _envoy(secured, tmp_path, processes, secured.proxy_a)
    # The listener, then the plugin, both over the mTLS stream.
    wait_for(lambda: "who-am-i" in http_get(secured.port).headers, what="namespace a's plugin through mTLS")

    refused = _ask_as(secured, secured.proxy_a, "b")
    assert refused is not None and refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "namespace 'a', not 'b'" in (refused.details() or "")
    assert (
        "proxy asking-as-b refused: the client certificate is for namespace 'a', not 'b'"
        in secured.control_plane.process.log()
    )
    assert _ask_as(secured, secured.proxy_b, "b") is None
    no_certificate = _ask_as(secured, None, "a")
    assert no_certificate is not None and no_certificate.code() == grpc.StatusCode.UNAVAILABLE

    # The module port: a's module to a's proxy only; no certificate, no handshake.
    [module] = secured.control_plane.status()["modules"]
    path = f"/modules/{module['module_sha256']}.wasm"
    assert _module_get(secured.control_plane.http_port, _tls_client(secured, secured.proxy_a), path) == 200
    assert _module_get(secured.control_plane.http_port, _tls_client(secured, secured.proxy_b), path) == 404
    assert _module_get(secured.control_plane.http_port, _tls_client(secured, None), path) is None

    [proxy] = [p for p in secured.control_plane.status("proxies") if p["node"] == "proxy-a"]
    assert proxy["namespace"] == "a"


def test_tls_without_client_certificates(tmp_path: Path, httpbin_port: int, processes: list[Process]) -> None:
    secured = _start(tmp_path, httpbin_port, processes, mutual=False)
    _envoy(secured, tmp_path, processes, None)
    wait_for(lambda: "who-am-i" in http_get(secured.port).headers, what="the plugin through TLS")
    with socket.create_connection(("127.0.0.1", secured.control_plane.xds_port), timeout=5) as plain:
        plain.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert plain.recv(64) == b"", "a plaintext client is cut off"


def test_rotated_certificates_reach_new_connections_and_leave_open_streams(
    tmp_path: Path, httpbin_port: int, processes: list[Process]
) -> None:
    secured = _start(tmp_path, httpbin_port, processes, mutual=True)
    envoy = _envoy(secured, tmp_path, processes, secured.proxy_a)
    wait_for(lambda: "who-am-i" in http_get(secured.port).headers, what="namespace a's plugin")
    client = _tls_client(secured, secured.proxy_a)
    xds_port, module_port = secured.control_plane.xds_port, secured.control_plane.http_port
    assert _server_serial(xds_port, client, "h2") == secured.server.serial
    assert _server_serial(module_port, client) == secured.server.serial
    connections = envoy.stats()["cluster.xds-grpc.upstream_cx_total"]

    # As kubelet updates a mounted Secret: new files beside, then swapped in by renames.
    rotated = secured.authority.issue("controlplane", loopback=True, folder=tmp_path / "rotated")
    os.replace(rotated.key, secured.server.key)
    os.replace(rotated.cert, secured.server.cert)
    shutil.rmtree(tmp_path / "rotated")

    assert wait_for(lambda: _server_serial(xds_port, _tls_client(secured, secured.proxy_a), "h2") == rotated.serial)
    assert _server_serial(module_port, _tls_client(secured, secured.proxy_a)) == rotated.serial
    # Envoy's stream was not dropped, and still carries changes.
    (secured.config_dir / "limit.yaml").write_text(
        wasm_plugin_yaml(
            "limit", f"file://{RATELIMIT_WASM}", namespace="a", plugin_name="ratelimit", config={"rotated": True}
        )
    )
    wait_for(
        lambda: "rotated" in str(envoy.extension_configs().get("extensions.istio.io/wasmplugin/a.limit")),
        what="the change over the same stream",
    )
    stats = envoy.stats()
    assert stats["cluster.xds-grpc.upstream_cx_total"] == connections
    assert stats["control_plane.connected_state"] == 1
    assert "TLS certificate files changed" in secured.control_plane.process.log()
    # The change was timed from the file event to Envoy's ACK.
    metrics = secured.control_plane.metrics()
    assert metrics["controlplane_change_to_ack_seconds_count", ()] >= 1
    assert metrics["controlplane_xds_push_seconds_count", ()] >= 1
    assert metrics["controlplane_translation_seconds_count", ()] >= 1
