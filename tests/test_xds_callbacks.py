"""The discovery server's hooks, given at construction: a stream refused by `on_stream_open`, replies
reported with their latency, closed streams reported. In-process, over a real gRPC stream on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from controlplane.xds.cache import SnapshotCache
from controlplane.xds.connection import Connection, Reply
from controlplane.xds.server import Callbacks, DiscoveryServer, StreamOpening, StreamRefused
from controlplane.xds.snapshot import CLUSTER, Snapshot


async def serve(callbacks: Callbacks[str]) -> tuple[grpc.aio.Server, int]:
    first_watches: list[str] = []
    cache: SnapshotCache[str] = SnapshotCache(on_first_watch=first_watches.append)
    cache.set("k", Snapshot.of({CLUSTER: [cluster_pb2.Cluster(name="a")]}))
    ready = asyncio.Event()
    ready.set()
    server = grpc.aio.server()
    DiscoveryServer(cache, lambda node, standalone: "k", ready, callbacks).register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    assert first_watches == [], "the key had a snapshot already"
    return server, port


async def exchange(port: int, node_id: str, requests: list[Any], answers: int) -> list[Any]:
    """Sends the requests (each answering the response before it when it names nonce "?"), returns the
    responses, `answers` of them."""
    node = base_pb2.Node(id=node_id)
    responses: list[Any] = []
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[Any]:
        for request in requests:
            if request.response_nonce == "?":
                request.response_nonce = (await queue.get()).nonce
            request.node.CopyFrom(node)
            yield request
        await asyncio.sleep(1)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(outgoing())
        async for response in call:
            responses.append(response)
            queue.put_nowait(response)
            if len(responses) == answers:
                break
        await asyncio.sleep(0.3)  # the requests after the last answer reach the server
        call.cancel()
    return responses


def test_replies_and_stream_ends_are_reported_and_on_stream_open_can_refuse() -> None:
    opened: list[StreamOpening[str]] = []
    replies: list[Reply] = []
    closed: list[Connection[str]] = []

    def on_open(opening: StreamOpening[str]) -> None:
        opened.append(opening)
        if opening.node.id == "intruder":
            raise StreamRefused("not yours")

    callbacks: Callbacks[str] = Callbacks(
        on_stream_open=on_open,
        on_stream_closed=closed.append,
        on_reply=lambda connection, reply: replies.append(reply),
    )

    async def main() -> None:
        server, port = await serve(callbacks)
        try:
            nack = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, response_nonce="?")
            nack.error_detail.CopyFrom(status_pb2.Status(code=3, message="bad cluster"))
            requests = [
                discovery_pb2.DiscoveryRequest(type_url=CLUSTER),
                discovery_pb2.DiscoveryRequest(type_url=CLUSTER, response_nonce="?"),
                discovery_pb2.DiscoveryRequest(type_url=CLUSTER, response_nonce="no-such-nonce"),
                discovery_pb2.DiscoveryRequest(type_url=CLUSTER, resource_names=["a"]),
                nack,
            ]
            responses = await exchange(port, "proxy-1", requests, answers=2)
            assert [r.type_url for r in responses] == [CLUSTER, CLUSTER]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await exchange(port, "intruder", [discovery_pb2.DiscoveryRequest(type_url=CLUSTER)], answers=1)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert refused.value.details() == "not yours"
            for _ in range(50):
                if len(closed) == 1:
                    break
                await asyncio.sleep(0.1)
        finally:
            await server.stop(0)
        assert [(o.node.id, o.key, o.protocol) for o in opened] == [("proxy-1", "k", "sotw"), ("intruder", "k", "sotw")]
        assert [(r.nonce, r.error) for r in replies] == [
            (responses[0].nonce, None),
            (responses[1].nonce, "bad cluster"),
        ], "the unknown nonce is no reply"
        assert all(r.seconds >= 0 for r in replies)
        assert [c.node_id for c in closed] == ["proxy-1"], "a refused stream was never open"

    asyncio.run(main())
