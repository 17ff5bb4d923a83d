"""The gRPC services: aggregated (ADS) and extension-config-only (ECDS), each in state-of-the-world and
delta variants. One stream loop serves them all; the protocols differ only in how they answer.

A stream is two coroutines: the handler writes, a reader task reads and answers requests at once (an ACK
costs no wake-up of the writer). Responses are encoded bytes shared by the streams of a class, written
without a serializer. What a stream holds is bounded: a proxy that stops reading stops being read (HTTP/2
flow control then holds its requests back), and changes it has not taken yet are coalesced, so a slow
consumer is brought to the latest snapshot, never through every one in between."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds.cache import SnapshotCache
from controlplane.xds.connection import Connection, InvalidNode, Reply, printable, shared
from controlplane.xds.delta import DeltaProtocol
from controlplane.xds.snapshot import EXTENSION_CONFIG, SERVED_TYPES
from controlplane.xds.sotw import SotwProtocol
from controlplane.xds.stream import Response, StreamProtocol

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

MAX_QUEUED_RESPONSES = 8
"""Responses a stream holds for a proxy that does not read them; past this its requests wait unread."""

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    # gRPC cancels calls that wait for the application beyond these (1,000 and 3,000 by default): a
    # connect storm of thousands of proxies then sees streams fail. Memory bounds them instead.
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 100_000),
    # A proxy opens one ADS stream (and ECDS ones) on its connection; this bounds what one client opens.
    ("grpc.max_concurrent_streams", 1_000),
    # Workers of `serve --workers N` bind the same port; the kernel spreads the connections.
    ("grpc.so_reuseport", 1),
)
"""Options for the `grpc.aio.server` carrying the discovery services."""


class StreamRefused(Exception):
    """Raised by `Callbacks.on_stream_open` to refuse a stream: the proxy gets `code` and the message."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StreamOpening(Generic[K]):
    """A stream about to be served: who it says it is, and what the transport knows of the peer."""

    node: base_pb2.Node
    key: K
    protocol: str
    """"sotw" or "delta"."""
    service: str
    """The gRPC service: the aggregated one or the extension-config one."""
    peer: str
    auth: Mapping[str, Sequence[bytes]]
    """gRPC's auth context: over TLS, `x509_pem_cert`, `x509_subject_alternative_name`, ...; empty otherwise."""


def _nothing(*args: Any) -> None:
    pass


@dataclass(frozen=True)
class Callbacks(Generic[K]):
    """What the server tells its owner, as go-control-plane's callbacks do. Each runs on the event loop
    and must return quickly; none may block."""

    on_stream_open: Callable[[StreamOpening[K]], None] = _nothing
    """Before a stream is served (after its first request named the node): raise `StreamRefused` to refuse it."""
    on_stream_closed: Callable[[Connection[K]], None] = _nothing
    on_request: Callable[[Connection[K], Any], None] = _nothing
    """Each DiscoveryRequest or DeltaDiscoveryRequest of a served type, before it is answered."""
    on_response: Callable[[Connection[K], Response], None] = _nothing
    """Each response, once written to the stream."""
    on_reply: Callable[[Connection[K], Reply], None] = _nothing
    """Each ACK and NACK of a response the stream sent, with the time it took; requests naming a nonce the
    stream is not waiting on are not replies."""


@dataclass
class _Methods:
    request: Any
    protocol: str
    only_type: str | None
    """The extension-config service serves that type alone."""


_SERVICES: dict[str, dict[str, _Methods]] = {
    "envoy.service.discovery.v3.AggregatedDiscoveryService": {
        "StreamAggregatedResources": _Methods(discovery_pb2.DiscoveryRequest, "sotw", None),
        "DeltaAggregatedResources": _Methods(discovery_pb2.DeltaDiscoveryRequest, "delta", None),
    },
    "envoy.service.extension.v3.ExtensionConfigDiscoveryService": {
        "StreamExtensionConfigs": _Methods(discovery_pb2.DiscoveryRequest, "sotw", EXTENSION_CONFIG),
        "DeltaExtensionConfigs": _Methods(discovery_pb2.DeltaDiscoveryRequest, "delta", EXTENSION_CONFIG),
    },
}


class DiscoveryServer(Generic[K]):
    """Serves the snapshots of a `SnapshotCache` to every stream. `connections` (what each stream was sent,
    and its ACKs and NACKs), `responses_sent` and `rejections` are for status views and metrics."""

    def __init__(
        self,
        cache: SnapshotCache[K],
        node_key: Callable[[base_pb2.Node, bool], K],
        ready: asyncio.Event,
        callbacks: Callbacks[K] | None = None,
    ) -> None:
        """`node_key(node, standalone_ecds)` says which snapshot a stream gets (raising `InvalidNode` when the
        node does not say); `standalone_ecds` is true on the extension-config service. No stream is answered
        before `ready` is set."""
        self._cache = cache
        self._node_key = node_key
        self._ready = ready
        self._callbacks: Callbacks[K] = callbacks or Callbacks()
        self._nonces = itertools.count(1)
        self.connections: dict[int, Connection[K]] = {}
        self.responses_sent: Counter[str] = Counter()
        """By type URL."""
        self.rejections: Counter[str] = Counter()
        """NACKs by type URL."""

    def register(self, server: grpc.aio.Server) -> None:
        for service, methods in _SERVICES.items():
            handlers = {
                name: grpc.stream_stream_rpc_method_handler(
                    self._handler(m), request_deserializer=m.request.FromString, response_serializer=None
                )
                for name, m in methods.items()
            }
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))

    def _handler(self, methods: _Methods) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
        async def handle(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await self.stream(context, methods.protocol, methods.only_type)

        return handle

    async def stream(self, context: grpc.aio.ServicerContext[Any, Any], protocol: str, only_type: str | None) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if not first.node.id:
            # As Istio: a proxy that does not say who it is cannot be told apart in any view or log.
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id")
        try:
            key = self._node_key(first.node, only_type is not None)
        except InvalidNode as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # Nobody is answered before the directory is loaded: a partial config would be worse than none.
        await self._ready.wait()
        node_id = printable(first.node.id)
        refusal = self._refusal(context, first.node, key, protocol, only_type)
        if refusal is not None:
            log.warning("proxy %s refused: %s", node_id, printable(str(refusal)))
            await context.abort(refusal.code, str(refusal))
        key = shared(key)  # only for streams served: a refused client cannot make the server keep anything
        connection = Connection(first.node.id, key, protocol, time.time())
        stream_id = id(connection)
        handler: StreamProtocol = (SotwProtocol if protocol == "sotw" else DeltaProtocol)(
            connection, functools.partial(self._cache.get, key), self._nonces, self._on_reply
        )
        stream = _Stream(connection, handler, only_type, self._callbacks, self.responses_sent)
        self.connections[stream_id] = connection
        log.info("proxy %s connected (%s) in %s", node_id, protocol, printable(_short(key)))
        cancel_watch = self._cache.watch(key, stream.notify)
        reader = asyncio.create_task(stream.read(context))
        try:
            stream.handle(first)
            del first  # a proxy's node can be large: no stream keeps its first request
            await stream.write(context)
        finally:
            cancel_watch()
            reader.cancel()
            del self.connections[stream_id]
            self._callbacks.on_stream_closed(connection)
            log.info("proxy %s disconnected", node_id)

    def _refusal(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        node: base_pb2.Node,
        key: K,
        protocol: str,
        only_type: str | None,
    ) -> StreamRefused | None:
        # Apart from the stream's coroutine, so that what the hook was shown (the peer's certificates among
        # it) is not kept for the life of the stream.
        service = "extension configs" if only_type else "aggregated"
        try:
            self._callbacks.on_stream_open(
                StreamOpening(node, key, protocol, service, context.peer(), context.auth_context())
            )
        except StreamRefused as exc:
            return exc
        return None

    def _on_reply(self, connection: Connection[K], reply: Reply) -> None:
        if reply.error is not None:
            self.rejections[reply.type_url] += 1
            if reply.news:
                log.warning(
                    "proxy %s rejected %s version %s: %s",
                    printable(connection.node_id),
                    reply.type_url.rsplit(".", 1)[-1],
                    reply.version,
                    printable(reply.error, 1000),
                )
        self._callbacks.on_reply(connection, reply)


def _short(key: object) -> str:
    """A proxy class for a log line: its namespace and how many labels, never the labels themselves (a
    proxy chooses them, and their size)."""
    namespace, labels = getattr(key, "namespace", None), getattr(key, "labels", None)
    if namespace is None or labels is None:
        return str(key)
    return f"namespace {namespace} with {len(labels)} labels"


@dataclass(slots=True)
class _Stream(Generic[K]):
    connection: Connection[K]
    handler: StreamProtocol
    only_type: str | None
    callbacks: Callbacks[K]
    sent: Counter[str]
    """Responses written, by type URL: the server's count, shared by its streams."""
    outbox: list[Response] = field(default_factory=list)
    """At most MAX_QUEUED_RESPONSES, and most often none: a list costs an idle stream less than a deque."""
    changed: bool = False
    """A change of the snapshot not yet taken into account: taken when the writer is free."""
    ended: bool = False
    failure: tuple[grpc.StatusCode, str] | None = None
    _writer: asyncio.Future[None] | None = None
    _reader: asyncio.Future[None] | None = None

    def notify(self) -> None:
        self.changed = True
        self._wake_writer()

    def handle(self, request: Any) -> bool:
        """False at the end of the requests."""
        if request is grpc.aio.EOF:
            return False
        if self.only_type is not None and request.type_url != self.only_type:
            self.failure = (grpc.StatusCode.INVALID_ARGUMENT, f"this service serves only {self.only_type}")
            self._wake_writer()
        elif request.type_url in SERVED_TYPES:  # else nothing is kept for it, so that no client can grow it
            self.callbacks.on_request(self.connection, request)
            responses = self.handler.on_request(request)
            if responses:  # an ACK, most requests, wakes nobody
                self.outbox.extend(responses)
                self._wake_writer()
        return True

    async def read(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # No request outlives its handling: an idle stream holds none.
        try:
            while self.failure is None:
                while len(self.outbox) >= MAX_QUEUED_RESPONSES:
                    self._reader = asyncio.get_running_loop().create_future()
                    await self._reader
                if not self.handle(await context.read()):
                    break
        except grpc.RpcError:
            pass
        finally:
            self.ended = True
            self._wake_writer()

    async def write(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        while True:
            if self.failure is not None:
                await context.abort(*self.failure)
            if self.outbox:
                await self._send(context, self.outbox.pop(0))
            elif self.changed:
                self.changed = False
                self.outbox.extend(self.handler.on_change())
            elif self.ended:
                return
            else:
                self._writer = asyncio.get_running_loop().create_future()
                await self._writer

    async def _send(self, context: grpc.aio.ServicerContext[Any, Any], response: Response) -> None:
        # Apart, so that no idle stream keeps the last response it sent.
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)
        await context.write(response.encoded)
        self.sent[response.type_url] += 1
        self.callbacks.on_response(self.connection, response)

    def _wake_writer(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)
