"""How long a change takes to reach the fleet, for the metrics. Two clocks:
- push: from a new snapshot of a proxy's class to the first response of it written to that proxy's stream;
- change to ACK: from the first file event of a change to the moment the last proxy whose config it changed
  has answered (ACK or NACK) everything it was sent for it. A proxy that disconnects meanwhile no longer
  counts; a rescan or a module arriving without a file event is not timed."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from controlplane.xds.connection import Connection

MAX_ROUNDS = 64


@dataclass(eq=False)
class _Round:
    started: float
    waiting: set[int]
    """Connections (by id) the change is to be pushed to, until they have answered it."""
    pushed: set[int] = field(default_factory=set)


class Convergence:
    def __init__(
        self,
        observe_push: Callable[[float], None],
        observe_change_to_ack: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._observe_push = observe_push
        self._observe_change = observe_change_to_ack
        self._clock = clock
        self._changed_at: float | None = None
        self._rounds: list[_Round] = []
        self._push_pending: dict[int, float] = {}
        """Per connection (by id), when its class got the snapshot not yet written to it."""

    def changed(self) -> None:
        """A file event: the clock starts at the first one not yet loaded."""
        if self._changed_at is None:
            self._changed_at = self._clock()

    def rebuilt(self, changed_keys: Collection[Hashable], connections: Iterable[Connection[Any]]) -> None:
        """New snapshots were handed to the proxy classes `changed_keys`."""
        now = self._clock()
        waiting = {id(c) for c in connections if c.key in changed_keys}
        self._push_pending.update(dict.fromkeys(waiting, now))
        started, self._changed_at = self._changed_at, None
        if started is None:
            return
        if waiting:  # a change no proxy's config saw has nothing to time
            self._rounds.append(_Round(started, waiting))
            # A stream the change gave nothing new to send never answers it: such rounds end with the
            # stream, and only so many wait meanwhile.
            del self._rounds[:-MAX_ROUNDS]

    def responded(self, connection: Connection[Any]) -> None:
        """A response was written to the stream."""
        since = self._push_pending.pop(id(connection), None)
        if since is None:
            return
        self._observe_push(self._clock() - since)
        for round_ in self._rounds:
            if id(connection) in round_.waiting:
                round_.pushed.add(id(connection))

    def answered(self, connection: Connection[Any]) -> None:
        """The proxy ACKed or NACKed a response."""
        if not any(s.outstanding for s in connection.types.values()):
            self._forget(id(connection), pushed_only=True)

    def closed(self, connection: Connection[Any]) -> None:
        self._push_pending.pop(id(connection), None)
        self._forget(id(connection), pushed_only=False)

    def _forget(self, connection: int, pushed_only: bool) -> None:
        for round_ in list(self._rounds):
            if not pushed_only or connection in round_.pushed:
                round_.waiting.discard(connection)
            if not round_.waiting:
                self._rounds.remove(round_)
                self._observe_change(self._clock() - round_.started)
