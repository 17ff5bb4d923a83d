"""What the state-of-the-world and delta protocols share: one stream's connection, where its snapshot
comes from, how far the stream has been brought up to date, and the responses they hand to the wire."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds.connection import Connection, Reply, TypeState
from controlplane.xds.snapshot import Encoded, Snapshot, with_nonce

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Response:
    """One response of one stream, encoded for the wire: most often the very bytes every stream of its
    class is written (see `Encoded`)."""

    type_url: str
    version: str
    nonce: str
    encoded: bytes = field(repr=False)
    delta: bool

    def message(self) -> discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse:
        """The response decoded, for whoever wants to look inside (tests, debugging)."""
        kind = discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse
        return kind.FromString(self.encoded)


class StreamProtocol(Protocol):
    def on_request(self, request: Any) -> list[Response]: ...

    def on_change(self) -> list[Response]: ...


def _ignore(connection: Connection[Any], reply: Reply) -> None:
    pass


class StreamState(Generic[K]):
    __slots__ = ("_connection", "_snapshot", "_nonces", "_on_reply", "_pushed")
    delta = False
    """Whether responses are DeltaDiscoveryResponses."""

    def __init__(
        self,
        connection: Connection[K],
        snapshot: Callable[[], Snapshot | None],
        nonces: Iterator[int],
        on_reply: Callable[[Connection[K], Reply], None] = _ignore,
    ) -> None:
        """`on_reply` hears of every ACK and NACK of a response this stream sent (not of requests naming
        unknown nonces)."""
        self._connection = connection
        self._snapshot = snapshot
        self._nonces = nonces
        self._on_reply = on_reply
        self._pushed: str | None = None
        """The version of the snapshot this stream was last brought up to."""

    def _record_reply(self, type_url: str, nonce: str, error: str | None) -> None:
        reply = self._connection.record_reply(type_url, nonce, error)
        if reply is not None:
            self._on_reply(self._connection, reply)

    def _response(
        self, state: TypeState, type_url: str, version: str, names: frozenset[str], body: Encoded
    ) -> Response:
        nonce, wire = body.nonce, body.wire
        if nonce in state.outstanding or state.dropped_unanswered:
            # Maybe sent before on this stream and not answered yet: its answer must say which one it answers.
            nonce = f"{body.nonce}.{next(self._nonces)}"
            wire = with_nonce(body.wire, nonce)  # a later nonce field replaces the shared one
        state.sending(nonce, version, names)
        return Response(type_url, version, nonce, wire, self.delta)

    def _caught_up(self, snapshot: Snapshot) -> None:
        self._pushed = snapshot.version

    def _behind(self, snapshot: Snapshot) -> bool:
        """A change landed that was not pushed to this stream yet: answering one type alone from it would
        break make-before-break, so the whole stream must be brought up to date instead."""
        if self._pushed is None:
            self._pushed = snapshot.version  # the stream starts at the snapshot it first sees
            return False
        return snapshot.version != self._pushed
