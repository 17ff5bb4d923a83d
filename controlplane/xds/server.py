"""The gRPC services: aggregated (ADS) and extension-config-only (ECDS), each in state-of-the-world and
delta variants. One stream loop serves them all; the protocols differ only in how they answer."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any, Generic, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.extension.v3 import config_discovery_pb2_grpc

from controlplane.xds.cache import SnapshotCache
from controlplane.xds.connection import Connection, InvalidNode
from controlplane.xds.delta import DeltaProtocol
from controlplane.xds.snapshot import EXTENSION_CONFIG, SERVED_TYPES
from controlplane.xds.sotw import SotwProtocol
from controlplane.xds.stream import StreamProtocol

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

_CHANGED = object()
_CLOSED = object()


class StreamEvents(Generic[K]):
    """What the server tells its owner about streams; the defaults do nothing."""

    def admit(self, key: K, context: grpc.aio.ServicerContext) -> str | None:
        """Why a stream asking as `key` is refused (PERMISSION_DENIED), or None to serve it."""
        return None

    def pushed(self, connection: Connection[K], seconds: float) -> None:
        """A change reached the stream: its responses were handed to gRPC `seconds` after the change."""

    def answered(self, connection: Connection[K]) -> None:
        """The proxy ACKed or NACKed a response."""


class DiscoveryServer(Generic[K]):
    def __init__(
        self,
        cache: SnapshotCache[K],
        node_key: Callable[[base_pb2.Node, bool], K],
        ready: asyncio.Event,
        events: StreamEvents[K] | None = None,
    ) -> None:
        """`node_key(node, standalone_ecds)` says which snapshot a stream gets; `standalone_ecds` is true on the
        extension-config service."""
        self._cache = cache
        self._node_key = node_key
        self._ready = ready
        self._events: StreamEvents[K] = events or StreamEvents()
        self._nonces = itertools.count(1)
        self.connections: dict[int, Connection[K]] = {}
        self.responses_sent: Counter[str] = Counter()
        """By type URL, for metrics."""
        self.rejections: Counter[str] = Counter()

    def register(self, server: grpc.aio.Server) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Aggregated(self), server)
        config_discovery_pb2_grpc.add_ExtensionConfigDiscoveryServiceServicer_to_server(_ExtensionConfigs(self), server)

    async def stream(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        protocol: str,
        only_type: str | None = None,
    ) -> AsyncIterator[Any]:
        """`only_type`: the stream is the extension-config service, which serves that type alone."""
        inbox: asyncio.Queue[object] = asyncio.Queue()
        reader = asyncio.create_task(_pump(requests, inbox))
        stream_id = id(inbox)
        cancel_watch: Callable[[], None] | None = None
        try:
            first = await inbox.get()
            if first is _CLOSED:
                return
            try:
                key = self._node_key(first.node, only_type is not None)  # type: ignore[attr-defined]
            except InvalidNode as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                return
            refusal = self._events.admit(key, context)
            if refusal is not None:
                log.warning("proxy %r refused: %s", first.node.id[:200], refusal)  # type: ignore[attr-defined]
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
                return
            # Nobody is answered before the directory is loaded: a partial config would be worse than none.
            await self._ready.wait()
            connection = Connection(first.node.id, key, protocol, time.time())  # type: ignore[attr-defined]
            self.connections[stream_id] = connection
            log.info("proxy %s connected (%s) as %s", connection.node_id, protocol, key)
            snapshot = lambda: self._cache.get(key)  # noqa: E731
            handler: StreamProtocol = (
                SotwProtocol(connection, snapshot, self._nonces)
                if protocol == "sotw"
                else DeltaProtocol(connection, snapshot, self._nonces)
            )
            change_queued = False
            changed_at = 0.0

            def notify() -> None:
                nonlocal change_queued, changed_at
                if not change_queued:
                    change_queued, changed_at = True, time.monotonic()
                    inbox.put_nowait(_CHANGED)

            cancel_watch = self._cache.watch(key, notify)
            item: object = first
            while item is not _CLOSED:
                if item is _CHANGED:
                    change_queued = False
                    responses = handler.on_change()
                elif only_type is not None and item.type_url != only_type:  # type: ignore[attr-defined]
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"this service serves only {only_type}")
                    return
                elif item.type_url not in SERVED_TYPES:  # type: ignore[attr-defined]
                    # Nothing of that type is served: no state for it, so that no client can grow ours.
                    responses = []
                else:
                    if item.HasField("error_detail"):  # type: ignore[attr-defined]
                        self.rejections[item.type_url] += 1  # type: ignore[attr-defined]
                    responses = handler.on_request(item)
                for response in responses:
                    self.responses_sent[response.type_url] += 1
                    yield response
                if item is _CHANGED:
                    self._events.pushed(connection, time.monotonic() - changed_at)
                elif item.response_nonce:  # type: ignore[attr-defined]
                    self._events.answered(connection)
                item = await inbox.get()
        finally:
            if cancel_watch is not None:
                cancel_watch()
            reader.cancel()
            closed = self.connections.pop(stream_id, None)
            if closed is not None:
                log.info("proxy %s disconnected", closed.node_id)


class _Aggregated(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    # grpc.aio recognises streaming handlers by their being async generator functions, hence the loops.

    def __init__(self, server: DiscoveryServer[Any]) -> None:
        self._server = server

    async def StreamAggregatedResources(self, requests: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        async for response in self._server.stream(requests, context, "sotw"):
            yield response

    async def DeltaAggregatedResources(self, requests: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        async for response in self._server.stream(requests, context, "delta"):
            yield response


class _ExtensionConfigs(config_discovery_pb2_grpc.ExtensionConfigDiscoveryServiceServicer):
    """For proxies that keep their own listeners and take only the plugins from this server."""

    def __init__(self, server: DiscoveryServer[Any]) -> None:
        self._server = server

    async def StreamExtensionConfigs(self, requests: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        async for response in self._server.stream(requests, context, "sotw", EXTENSION_CONFIG):
            yield response

    async def DeltaExtensionConfigs(self, requests: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        async for response in self._server.stream(requests, context, "delta", EXTENSION_CONFIG):
            yield response


async def _pump(requests: AsyncIterator[Any], inbox: asyncio.Queue[object]) -> None:
    try:
        async for request in requests:
            inbox.put_nowait(request)
    except (asyncio.CancelledError, grpc.RpcError):
        pass
    finally:
        inbox.put_nowait(_CLOSED)
