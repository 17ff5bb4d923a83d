"""The state-of-the-world ADS servicer: one stream per proxy, every type multiplexed on it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from controlplane.xds.cache import SnapshotCache
from controlplane.xds.snapshot import CLUSTER, PUSH_ORDER, WILDCARD_TYPES, Resource, Resources, Snapshot

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)


class InvalidNode(ValueError):
    """The node of a stream's first request does not say which resources it should get."""


@dataclass
class TypeState:
    """What one stream subscribed to of one type, what it was sent, and what it answered."""

    names: frozenset[str] | None = None
    """None: every resource of the type (wildcard)."""
    nonce: str = ""
    sent: Resources | None = None
    acked_version: str = ""
    rejected_version: str = ""
    error: str = ""
    """The error_detail of the last NACK, cleared by the next ACK."""


@dataclass
class Connection(Generic[K]):
    node_id: str
    key: K
    connected_at: float
    types: dict[str, TypeState] = field(default_factory=dict)
    change_queued: bool = False


_CHANGED = object()
_CLOSED = object()


class AggregatedDiscoveryServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer, Generic[K]):
    def __init__(self, cache: SnapshotCache[K], node_key: Callable[[base_pb2.Node], K], ready: asyncio.Event) -> None:
        self._cache = cache
        self._node_key = node_key
        self._ready = ready
        self._nonces = itertools.count(1)
        self.connections: dict[int, Connection[K]] = {}

    async def StreamAggregatedResources(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        inbox: asyncio.Queue[object] = asyncio.Queue()
        reader = asyncio.create_task(_pump(request_iterator, inbox))
        stream_id = id(inbox)
        cancel_watch: Callable[[], None] | None = None
        try:
            first = await inbox.get()
            if not isinstance(first, discovery_pb2.DiscoveryRequest):
                return
            try:
                key = self._node_key(first.node)
            except InvalidNode as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                return
            await self._ready.wait()
            connection = Connection(first.node.id, key, time.time())
            self.connections[stream_id] = connection
            log.info("proxy %s connected as %s", connection.node_id, key)

            def notify() -> None:
                if not connection.change_queued:
                    connection.change_queued = True
                    inbox.put_nowait(_CHANGED)

            cancel_watch = self._cache.watch(key, notify)
            item: object = first
            while item is not _CLOSED:
                if item is _CHANGED:
                    connection.change_queued = False
                    responses = self._on_change(connection)
                else:
                    assert isinstance(item, discovery_pb2.DiscoveryRequest)
                    responses = self._on_request(connection, item)
                for response in responses:
                    yield response
                item = await inbox.get()
        finally:
            if cancel_watch is not None:
                cancel_watch()
            reader.cancel()
            closed = self.connections.pop(stream_id, None)
            if closed is not None:
                log.info("proxy %s disconnected", closed.node_id)

    def _on_request(
        self, connection: Connection[K], request: discovery_pb2.DiscoveryRequest
    ) -> list[discovery_pb2.DiscoveryResponse]:
        state = connection.types.setdefault(request.type_url, TypeState())
        if request.response_nonce and request.response_nonce != state.nonce:
            return []  # answers a response that a newer one has replaced: the protocol says ignore it
        if request.response_nonce:
            if request.HasField("error_detail"):
                rejected = state.sent.version if state.sent else ""
                message = request.error_detail.message
                if (rejected, message) != (state.rejected_version, state.error):
                    log.warning(
                        "proxy %s rejected %s version %s: %s",
                        connection.node_id,
                        _short(request.type_url),
                        rejected,
                        message,
                    )
                state.rejected_version, state.error = rejected, message
            else:
                state.acked_version = request.version_info
                state.error = ""
        names = frozenset(request.resource_names)
        wildcard = request.type_url in WILDCARD_TYPES and (not names or "*" in names)
        subscription = None if wildcard else names
        changed_subscription = subscription != state.names
        state.names = subscription
        if request.response_nonce and not changed_subscription:
            return []
        snapshot = self._cache.get(connection.key)
        if snapshot is None:
            return []
        return self._respond(state, request.type_url, snapshot, force=True)

    def _on_change(self, connection: Connection[K]) -> list[discovery_pb2.DiscoveryResponse]:
        snapshot = self._cache.get(connection.key)
        if snapshot is None:
            return []
        responses: list[discovery_pb2.DiscoveryResponse] = []
        cluster_state = connection.types.get(CLUSTER)
        removed_clusters = _removed(cluster_state, snapshot.resources(CLUSTER))
        ordered = list(PUSH_ORDER) + sorted(set(connection.types) - set(PUSH_ORDER))
        for type_url in ordered:
            state = connection.types.get(type_url)
            if state is None:
                continue
            if type_url == CLUSTER and removed_clusters:
                # Keep the clusters that the current listeners may still use until the listeners change.
                kept = Resources.of([*snapshot.resources(CLUSTER).items.values(), *removed_clusters])
                responses += self._send(state, type_url, kept)
            else:
                responses += self._respond(state, type_url, snapshot, force=False)
        if cluster_state is not None and removed_clusters:
            responses += self._respond(cluster_state, CLUSTER, snapshot, force=False)
        return responses

    def _respond(
        self, state: TypeState, type_url: str, snapshot: Snapshot, force: bool
    ) -> list[discovery_pb2.DiscoveryResponse]:
        resources = snapshot.resources(type_url)
        if state.names is not None:
            resources = resources.subset(state.names)
            if not resources.items:
                # Envoy takes an empty answer to a named subscription as a config with no resource and
                # rejects it; a name that does not exist yet is answered when it appears.
                return []
        if not force and state.sent is not None and state.sent.version == resources.version:
            return []
        return self._send(state, type_url, resources)

    def _send(self, state: TypeState, type_url: str, resources: Resources) -> list[discovery_pb2.DiscoveryResponse]:
        state.nonce = str(next(self._nonces))
        state.sent = resources
        return [
            discovery_pb2.DiscoveryResponse(
                version_info=resources.version,
                resources=[r.body for r in resources.items.values()],
                type_url=type_url,
                nonce=state.nonce,
            )
        ]


def _removed(state: TypeState | None, new: Resources) -> list[Resource]:
    if state is None or state.sent is None:
        return []
    return [r for name, r in state.sent.items.items() if name not in new.items]


async def _pump(requests: AsyncIterator[discovery_pb2.DiscoveryRequest], inbox: asyncio.Queue[object]) -> None:
    try:
        async for request in requests:
            inbox.put_nowait(request)
    except (asyncio.CancelledError, grpc.RpcError):
        pass
    finally:
        inbox.put_nowait(_CLOSED)


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]
