"""How long a change in the config directory takes to reach the fleet: from the first file event of a
change to the moment the last proxy whose config it changed has answered (ACK or NACK) everything it was
sent for it. A proxy that disconnects meanwhile no longer counts."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from controlplane.xds.connection import Connection


@dataclass(eq=False)
class _Round:
    started: float
    waiting: set[int]
    """Connections (by id) the change was pushed to or is still to be pushed to."""
    pushed: set[int] = field(default_factory=set)


class Convergence:
    def __init__(self, observe: Callable[[float], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._observe = observe
        self._clock = clock
        self._changed_at: float | None = None
        self._rounds: list[_Round] = []

    def changed(self) -> None:
        """A file event: the clock starts at the first one not yet loaded."""
        if self._changed_at is None:
            self._changed_at = self._clock()

    def rebuilt(self, changed_keys: Collection[Hashable], connections: Iterable[Connection[Any]]) -> None:
        """A reload handed new snapshots to the proxy classes `changed_keys`."""
        started, self._changed_at = self._changed_at, None
        if started is None:
            return  # a rescan or a module that arrived: no file change to time
        waiting = {id(c) for c in connections if c.key in changed_keys}
        if waiting:
            self._rounds.append(_Round(started, waiting))
        else:
            self._observe(self._clock() - started)

    def pushed(self, connection: Connection[Any]) -> None:
        for round_ in self._rounds:
            if id(connection) in round_.waiting:
                round_.pushed.add(id(connection))
        self.answered(connection)

    def answered(self, connection: Connection[Any], open_connections: Collection[Connection[Any]] = ()) -> None:
        """Called after each ACK or NACK and each push; `open_connections` lets the rounds forget the
        streams that ended."""
        done = id(connection) if not any(s.outstanding for s in connection.types.values()) else None
        open_ids = {id(c) for c in open_connections} if open_connections else None
        for round_ in list(self._rounds):
            if done is not None and done in round_.pushed:
                round_.waiting.discard(done)
            if open_ids is not None:
                round_.waiting &= open_ids
            if not round_.waiting:
                self._rounds.remove(round_)
                self._observe(self._clock() - round_.started)
