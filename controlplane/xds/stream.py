"""What the state-of-the-world and delta protocols share: one stream's connection, where its snapshot
comes from, and how far the stream has been brought up to date."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from controlplane.xds.connection import Connection
from controlplane.xds.snapshot import Snapshot

K = TypeVar("K", bound=Hashable)


class StreamProtocol(Protocol):
    def on_request(self, request: Any) -> list[Any]: ...

    def on_change(self) -> list[Any]: ...


class StreamState(Generic[K]):
    def __init__(
        self, connection: Connection[K], snapshot: Callable[[], Snapshot | None], nonces: Iterator[int]
    ) -> None:
        self._connection = connection
        self._snapshot = snapshot
        self._nonces = nonces
        self._pushed: str | None = None
        """The version of the snapshot this stream was last brought up to."""

    def _caught_up(self, snapshot: Snapshot) -> None:
        self._pushed = snapshot.version

    def _behind(self, snapshot: Snapshot) -> bool:
        """A change landed that was not pushed to this stream yet: answering one type alone from it would
        break make-before-break, so the whole stream must be brought up to date instead."""
        if self._pushed is None:
            self._pushed = snapshot.version  # the stream starts at the snapshot it first sees
            return False
        return snapshot.version != self._pushed
