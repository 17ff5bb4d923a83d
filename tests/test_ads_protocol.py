"""The ADS stream as the xDS protocol describes it, driven by a scripted client over a real gRPC stream
to a real control plane process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER
from tests.support import (
    RATELIMIT_WASM,
    ControlPlaneProcess,
    Process,
    free_port,
    http_get,
    sidecar_yaml,
    start_control_plane,
    wasm_plugin_yaml,
    write_atomically,
)

QUIET_SECONDS = 0.7
"""How long a client waits to conclude that the server sent nothing: long against a push on loopback."""


class Client:
    def __init__(self, port: int, node_id: str, labels: dict[str, str]) -> None:
        self.node = base_pb2.Node(id=node_id)
        self.node.metadata.update({"NAMESPACE": "default", "LABELS": labels})
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._outbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._call = stub.StreamAggregatedResources(self._requests())
        # Responses are read by a task of their own: a timed-out read would cancel the whole stream.
        self._inbox: asyncio.Queue[discovery_pb2.DiscoveryResponse | BaseException] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._inbox.put_nowait(response)
        except grpc.aio.AioRpcError as exc:
            self._inbox.put_nowait(exc)

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request

    def send(
        self, type_url: str, names: list[str] | None = None, version: str = "", nonce: str = "", error: str = ""
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            node=self.node, type_url=type_url, resource_names=names or [], version_info=version, response_nonce=nonce
        )
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._outbox.put_nowait(request)

    def ack(self, response: discovery_pb2.DiscoveryResponse, names: list[str] | None = None) -> None:
        self.send(response.type_url, names, response.version_info, response.nonce)

    async def receive(self, timeout: float = 10) -> discovery_pb2.DiscoveryResponse:
        item = await asyncio.wait_for(self._inbox.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def nothing_arrives(self) -> bool:
        try:
            item = await asyncio.wait_for(self._inbox.get(), QUIET_SECONDS)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected: {item}")

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        self._reader.cancel()
        await self._channel.close()


@pytest.fixture
def control_plane(tmp_path: Path, processes: list[Process]) -> ControlPlaneProcess:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "sidecars.yaml").write_text(
        sidecar_yaml("a", free_port(), free_port(), {"app": "a"})
        + "---\n"
        + sidecar_yaml("b", free_port(), free_port(), {"app": "b"})
    )
    return start_control_plane(processes, config_dir, tmp_path)


def run(control_plane: ControlPlaneProcess, script: Callable[..., Awaitable[None]], *labels: str) -> None:
    async def main() -> None:
        clients = [Client(control_plane.xds_port, f"proxy-{app}", {"app": app}) for app in labels]
        try:
            await script(*clients)
        finally:
            for client in clients:
                await client.close()

    asyncio.run(main())


def plugin(config_dir: Path, app: str, requests_per_second: int) -> None:
    write_atomically(
        config_dir / f"plugin-{app}.yaml",
        wasm_plugin_yaml(
            f"limit-{app}",
            f"file://{RATELIMIT_WASM}",
            selector={"app": app},
            plugin_name="ratelimit",
            config={"requests_per_second": requests_per_second},
        ),
    )


def test_ack_is_not_answered_and_a_nack_is_recorded_and_not_resent(control_plane: ControlPlaneProcess) -> None:
    async def script(client: Client) -> None:
        client.send(CLUSTER)
        clusters = await client.receive()
        assert clusters.type_url == CLUSTER
        names = _names(clusters)
        assert "wasm-modules" in names and len(names) == 2
        assert [n for n in names if n.startswith("inbound|")] == [n for n in names if n != "wasm-modules"]
        client.ack(clusters)
        assert await client.nothing_arrives()

        client.send(LISTENER)
        listeners = await client.receive()
        client.send(LISTENER, version="", nonce=listeners.nonce, error="cannot bind: Address already in use")
        assert await client.nothing_arrives()
        status = control_plane.status("proxies")
        assert status[0]["types"][LISTENER]["error"] == "cannot bind: Address already in use"
        assert status[0]["types"][LISTENER]["rejected"] == listeners.version_info
        assert status[0]["types"][CLUSTER]["acked"] == clusters.version_info

    run(control_plane, script, "a")


def test_stale_nonce_is_ignored(control_plane: ControlPlaneProcess) -> None:
    async def script(client: Client) -> None:
        client.send(CLUSTER)
        first = await client.receive()
        client.send(CLUSTER, names=["inbound|1||"], nonce="not-the-latest")
        assert await client.nothing_arrives()
        client.ack(first)
        assert await client.nothing_arrives()

    run(control_plane, script, "a")


def test_named_resource_that_does_not_exist_yet_is_sent_when_it_appears(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    name = "extensions.istio.io/wasmplugin/default.limit-a"

    async def script(client: Client) -> None:
        client.send(EXTENSION_CONFIG, names=[name])
        assert await client.nothing_arrives()
        plugin(tmp_path / "config", "a", 5)
        response = await client.receive()
        assert response.type_url == EXTENSION_CONFIG
        assert _names(response) == [name]

    run(control_plane, script, "a")


def test_a_change_is_pushed_only_to_the_proxies_it_concerns(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    async def script(a: Client, b: Client) -> None:
        for client in (a, b):
            client.send(LISTENER)
            client.ack(await client.receive())
        plugin(tmp_path / "config", "a", 5)
        pushed = await a.receive()
        assert pushed.type_url == LISTENER
        assert await b.nothing_arrives()

    run(control_plane, script, "a", "b")


def test_a_node_with_malformed_metadata_is_refused(control_plane: ControlPlaneProcess) -> None:
    async def script(client: Client) -> None:
        client.node.metadata.update({"LABELS": "app=a"})
        client.send(CLUSTER)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.receive()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "LABELS" in (refused.value.details() or "")

    run(control_plane, script, "a")
    assert http_get(control_plane.http_port, "/healthz").status == 200


_MESSAGES = {
    CLUSTER: cluster_pb2.Cluster,
    LISTENER: listener_pb2.Listener,
    EXTENSION_CONFIG: extension_pb2.TypedExtensionConfig,
}


def _names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    names = []
    for resource in response.resources:
        message = _MESSAGES[response.type_url]()
        assert resource.Unpack(message)
        names.append(message.name)
    return names
