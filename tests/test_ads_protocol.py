"""The ADS stream as the xDS protocol describes it, driven by a scripted client over a real gRPC stream
to a real control plane process."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2, extension_pb2
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
    wait_for,
    wasm_plugin_yaml,
    write_atomically,
)
from tests.support import (
    resource_names as _names,
)

QUIET_SECONDS = 0.7
"""How long a client waits to conclude that the server sent nothing: long against a push on loopback."""


class Client:
    def __init__(
        self, port: int, node_id: str, labels: dict[str, str], delta: bool = False, host: str = "127.0.0.1"
    ) -> None:
        self.node = base_pb2.Node(id=node_id)
        self.node.metadata.update({"NAMESPACE": "default", "LABELS": labels})
        self._channel = grpc.aio.insecure_channel(f"{host}:{port}")
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        rpc = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self._call = rpc(self._requests())
        # Responses are read by a task of their own: a timed-out read would cancel the whole stream.
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._inbox.put_nowait(response)
        except grpc.aio.AioRpcError as exc:
            self._inbox.put_nowait(exc)

    async def _requests(self) -> AsyncIterator[Any]:
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

    def send_delta(
        self,
        type_url: str,
        subscribe: list[str] | None = None,
        unsubscribe: list[str] | None = None,
        initial: dict[str, str] | None = None,
        nonce: str = "",
        error: str = "",
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            node=self.node,
            type_url=type_url,
            resource_names_subscribe=subscribe or [],
            resource_names_unsubscribe=unsubscribe or [],
            initial_resource_versions=initial or {},
            response_nonce=nonce,
        )
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._outbox.put_nowait(request)

    def ack(self, response: discovery_pb2.DiscoveryResponse, names: list[str] | None = None) -> None:
        self.send(response.type_url, names, response.version_info, response.nonce)

    async def receive(self, timeout: float = 10) -> Any:
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


def run(
    control_plane: ControlPlaneProcess, script: Callable[..., Awaitable[None]], *labels: str, delta: bool = False
) -> None:
    async def main() -> None:
        clients = [Client(control_plane.xds_port, f"proxy-{app}", {"app": app}, delta) for app in labels]
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
        assert len(names) == 1 and names[0].startswith("inbound|")
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
    assert http_get(control_plane.admin_port, "/healthz").status == 200


def test_sotw_new_names_are_answered_and_a_rejected_config_does_not_stop_the_next_change(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    plugin(tmp_path / "config", "a", 5)
    first, second = "extensions.istio.io/wasmplugin/default.limit-a", "extensions.istio.io/wasmplugin/default.limit-b"
    write_atomically(
        tmp_path / "config" / "plugin-b.yaml",
        wasm_plugin_yaml(
            "limit-b",
            f"file://{RATELIMIT_WASM}",
            plugin_name="ratelimit",
            config={"requests_per_second": 1},
        ),
    )

    async def script(client: Client) -> None:
        client.send(EXTENSION_CONFIG, names=[first])
        response = await client.receive()
        assert _names(response) == [first]
        client.send(EXTENSION_CONFIG, names=[first], version="", nonce=response.nonce, error="bad filter")
        assert await client.nothing_arrives()
        client.send(EXTENSION_CONFIG, names=[first, second], version="", nonce=response.nonce)
        both = await client.receive()
        assert _names(both) == [first, second]
        client.ack(both, names=[first, second])
        plugin(tmp_path / "config", "a", 7)
        changed = await client.receive()
        # Only the config that changed: ECDS responses need not hold every resource.
        assert _names(changed) == [first] and changed.version_info != both.version_info
        assert control_plane.status("proxies")[0]["types"][EXTENSION_CONFIG]["error"] == ""

    run(control_plane, script, "a")


def test_sotw_reconnect_holding_the_current_version_is_sent_nothing(control_plane: ControlPlaneProcess) -> None:
    async def script(first: Client, again: Client) -> None:
        first.send(LISTENER)
        listeners = await first.receive()
        again.send(LISTENER, version=listeners.version_info)
        assert await again.nothing_arrives()
        again.send(CLUSTER, version="an older version")
        assert (await again.receive()).type_url == CLUSTER

    run(control_plane, script, "a", "a")


def test_delta_sends_changes_only_and_removes_after_the_listener(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    async def script(client: Client) -> None:
        client.send_delta(CLUSTER)
        clusters = await client.receive()
        client.send_delta(CLUSTER, nonce=clusters.nonce)
        client.send_delta(LISTENER)
        listeners = await client.receive()
        client.send_delta(LISTENER, nonce=listeners.nonce)
        assert _names(listeners) == [n for n in _names(listeners) if n.startswith("inbound|")] != []
        assert await client.nothing_arrives()

        (tmp_path / "config" / "sidecars.yaml").write_text(
            sidecar_yaml("a", free_port(), free_port(), {"app": "other"})
        )
        listener_removal = await client.receive()
        assert await client.nothing_arrives(), "clusters go only once the listeners that used them have"
        client.send_delta(LISTENER, nonce=listener_removal.nonce)
        cluster_removal = await client.receive()
        assert listener_removal.type_url == LISTENER and list(listener_removal.removed_resources) == _names(listeners)
        assert cluster_removal.type_url == CLUSTER and cluster_removal.resources == []
        assert [n for n in cluster_removal.removed_resources] == _names(clusters)

    run(control_plane, script, "a", delta=True)


def test_delta_reconnect_with_initial_versions_gets_only_what_differs(control_plane: ControlPlaneProcess) -> None:
    async def script(first: Client, again: Client) -> None:
        first.send_delta(CLUSTER)
        clusters = await first.receive()
        versions = {r.name: r.version for r in clusters.resources}
        again.send_delta(CLUSTER, initial=versions)
        assert await again.nothing_arrives()
        [cluster] = versions
        stale = dict(versions, **{cluster: "old"}, **{"inbound|9||": "gone"})
        third = Client(control_plane.xds_port, "proxy-a", {"app": "a"}, delta=True)
        try:
            third.send_delta(CLUSTER, initial=stale)
            update = await third.receive()
            assert _names(update) == [cluster]
            assert list(update.removed_resources) == ["inbound|9||"]
        finally:
            await third.close()

    run(control_plane, script, "a", "a", delta=True)


def test_delta_subscription_changes_count_even_with_a_stale_nonce(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    plugin(tmp_path / "config", "a", 5)
    name = "extensions.istio.io/wasmplugin/default.limit-a"

    async def script(client: Client) -> None:
        client.send_delta(EXTENSION_CONFIG, subscribe=["extensions.istio.io/wasmplugin/default.missing"])
        assert await client.nothing_arrives()
        client.send_delta(EXTENSION_CONFIG, subscribe=[name], nonce="stale")
        response = await client.receive()
        assert _names(response) == [name]

    run(control_plane, script, "a", delta=True)


def test_no_proxy_is_answered_before_the_directory_and_its_modules_are_loaded(
    tmp_path: Path, processes: list[Process]
) -> None:
    delay = threading.Event()

    class SlowModule(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            delay.wait(10)
            body = RATELIMIT_WASM.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    module_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowModule)
    threading.Thread(target=module_server.serve_forever, daemon=True).start()
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "sidecar.yaml").write_text(sidecar_yaml("a", free_port(), free_port(), {"app": "a"}))
    (config_dir / "plugin.yaml").write_text(
        wasm_plugin_yaml(
            "slow",
            f"http://127.0.0.1:{module_server.server_address[1]}/plugin.wasm",
            selector={"app": "a"},
            plugin_name="ratelimit",
            config={"requests_per_second": 1},
        )
    )
    control_plane = start_control_plane(processes, config_dir, tmp_path, until="/healthz")
    xds_port, admin_port = control_plane.xds_port, control_plane.admin_port

    async def script() -> None:
        client = Client(xds_port, "proxy-a", {"app": "a"})
        try:
            client.send(EXTENSION_CONFIG, names=["extensions.istio.io/wasmplugin/default.slow"])
            assert await client.nothing_arrives()
            assert http_get(admin_port, "/ready").status == 503
            delay.set()
            response = await client.receive()
            assert _names(response) == ["extensions.istio.io/wasmplugin/default.slow"]
            config = extension_pb2.TypedExtensionConfig()
            response.resources[0].Unpack(config)
            assert config.typed_config.type_url.endswith("filters.http.wasm.v3.Wasm")
        finally:
            await client.close()

    try:
        asyncio.run(script())
    finally:
        delay.set()
        module_server.shutdown()


def test_two_replicas_on_one_directory_send_the_same_versions(
    control_plane: ControlPlaneProcess, tmp_path: Path, processes: list[Process]
) -> None:
    plugin(tmp_path / "config", "a", 5)
    (tmp_path / "replica").mkdir()
    replica = start_control_plane(processes, tmp_path / "config", tmp_path / "replica")
    name = "extensions.istio.io/wasmplugin/default.limit-a"

    async def versions(port: int) -> dict[str, str]:
        client = Client(port, "proxy-a", {"app": "a"})
        try:
            result = {}
            for type_url, names in ((CLUSTER, None), (LISTENER, None), (EXTENSION_CONFIG, [name])):
                client.send(type_url, names)
                result[type_url] = (await client.receive()).version_info
            return result
        finally:
            await client.close()

    async def script() -> None:
        first, second = await versions(control_plane.xds_port), await versions(replica.xds_port)
        assert first == second
        assert len(set(first.values())) == 3

    asyncio.run(script())


def test_delta_nack_of_the_first_of_two_responses_of_a_type_is_recorded(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    async def script(client: Client) -> None:
        for type_url in (CLUSTER, LISTENER):
            client.send_delta(type_url)
            client.send_delta(type_url, nonce=(await client.receive()).nonce)
        (tmp_path / "config" / "sidecars.yaml").write_text(sidecar_yaml("a", free_port(), free_port(), {"app": "a"}))
        added, listeners = await client.receive(), await client.receive()
        assert listeners.resources and listeners.removed_resources, "a listener's add and removal go together"
        client.send_delta(LISTENER, nonce=listeners.nonce)
        removed = await client.receive()
        assert [r.type_url for r in (added, listeners, removed)] == [CLUSTER, LISTENER, CLUSTER]
        client.send_delta(CLUSTER, nonce=added.nonce, error="cluster rejected")
        client.send_delta(CLUSTER, nonce=removed.nonce)
        assert await client.nothing_arrives()
        state = control_plane.status("proxies")[0]["types"][CLUSTER]
        assert state["error"] == "cluster rejected"
        assert state["rejected"] == added.system_version_info

    run(control_plane, script, "a", delta=True)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_stream_that_never_reads_holds_bounded_memory(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    """A client sends requests that each ask for a large response, and reads none: the server stops reading
    its requests once a few responses wait, instead of holding every request."""
    write_atomically(
        tmp_path / "config" / "plugin-a.yaml",
        wasm_plugin_yaml("limit-a", f"file://{RATELIMIT_WASM}", selector={"app": "a"}, config={"blob": "x" * 300_000}),
    )
    name = "extensions.istio.io/wasmplugin/default.limit-a"
    wait_for(lambda: control_plane.status()["modules"] and control_plane.status()["modules"][0]["state"] == "ready")
    pid = control_plane.process.popen.pid
    before = _rss_bytes(pid)
    junk = "y" * 1_000_000
    sent = 0

    async def main() -> None:
        nonlocal sent
        node = base_pb2.Node(id="never-reads")
        node.metadata.update({"NAMESPACE": "default", "LABELS": {"app": "a"}})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.xds_port}") as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            for index in range(200):
                # Each request changes the subscription, so each asks for the large config again.
                names = [name, f"{junk}{index}"]
                request = discovery_pb2.DiscoveryRequest(node=node, type_url=EXTENSION_CONFIG, resource_names=names)
                try:
                    await asyncio.wait_for(call.write(request), 2)
                except TimeoutError:
                    break
                sent += 1
            await asyncio.sleep(1)
            call.cancel()

    asyncio.run(main())
    grown = _rss_bytes(pid) - before
    assert sent < 200, "the server kept reading requests whose responses were not read"
    assert grown < 100 * 1024 * 1024, f"server grew {grown / 2**20:.0f} MiB for {sent} requests"
    assert http_get(control_plane.admin_port, "/healthz").status == 200


def test_a_node_id_cannot_forge_log_lines_and_labels_are_not_logged_whole(control_plane: ControlPlaneProcess) -> None:
    async def script(client: Client) -> None:
        client.node.id = "proxy-a\n2026-01-01 00:00:00 ERROR FORGED: line"
        client.node.metadata.update({"LABELS": {"app": "a", **{f"label-{i}": "z" * 10_000 for i in range(100)}}})
        client.send(CLUSTER)
        assert (await client.receive()).type_url == CLUSTER

    run(control_plane, script, "a")
    wait_for(lambda: "disconnected" in control_plane.process.log(), what="the disconnect logged")
    log = control_plane.process.log()
    assert not any(line.startswith("2026-01-01 00:00:00 ERROR FORGED") for line in log.splitlines())
    assert "zzzzzzzzzz" not in log and len(log) < 20_000, f"{len(log)} characters logged"


def test_a_stream_without_node_id_is_refused(control_plane: ControlPlaneProcess) -> None:
    async def script(client: Client) -> None:
        client.node.id = ""
        client.send(CLUSTER)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.receive()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "node.id" in (refused.value.details() or "")

    run(control_plane, script, "a")


def test_a_nack_naming_an_unknown_nonce_is_not_counted(control_plane: ControlPlaneProcess) -> None:
    def rejections() -> float | None:
        return control_plane.metrics().get(("controlplane_xds_rejections_total", (("type_url", CLUSTER),)))

    async def script(client: Client) -> None:
        client.send(CLUSTER)
        clusters = await client.receive()
        for nonce in ("123456789", "bogus", ""):
            client.send(CLUSTER, nonce=nonce or clusters.nonce + "0", error="made up")
        assert await client.nothing_arrives()
        assert rejections() is None
        client.send(CLUSTER, nonce=clusters.nonce, error="a real rejection")
        assert await client.nothing_arrives()
        assert rejections() == 1

    run(control_plane, script, "a")


def test_workers_share_the_ports_and_send_the_same_versions(tmp_path: Path, processes: list[Process]) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "sidecars.yaml").write_text(sidecar_yaml("a", free_port(), free_port(), {"app": "a"}))
    plugin(config_dir, "a", 5)
    control_plane = start_control_plane(processes, config_dir, tmp_path, "--workers", "2")
    parent = control_plane.process.popen.pid

    def workers() -> list[int]:
        return [
            int(pid) for task in Path(f"/proc/{parent}/task").glob("*/children") for pid in task.read_text().split()
        ]

    wait_for(lambda: len(workers()) == 2, what="two workers")
    # Both bound the ports: each answers once it has loaded the directory.
    wait_for(lambda: all(http_get(control_plane.admin_port, "/ready").status == 200 for _ in range(10)))

    async def script(*clients: Client) -> None:
        versions = set()
        for client in clients:
            client.send(EXTENSION_CONFIG, names=["extensions.istio.io/wasmplugin/default.limit-a"])
            versions.add((await client.receive()).version_info)
        assert len(versions) == 1, versions

    run(control_plane, script, *["a"] * 8)
    children = workers()
    control_plane.process.popen.terminate()
    assert control_plane.process.popen.wait(timeout=15) == 0
    assert not [
        pid
        for pid in children
        if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
    ]
