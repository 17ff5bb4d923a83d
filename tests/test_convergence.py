"""The push and change-to-ACK clocks, on made-up streams."""

from __future__ import annotations

from controlplane.convergence import Convergence
from controlplane.xds.connection import Connection, Outstanding, TypeState
from controlplane.xds.snapshot import LISTENER


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _connection(key: str) -> Connection[str]:
    return Connection(key, key, "sotw", 0.0, {LISTENER: TypeState()})


def _send(convergence: Convergence, connection: Connection[str]) -> None:
    connection.types[LISTENER].outstanding["1"] = Outstanding("v", frozenset(), 0.0)
    convergence.responded(connection)


def _answer(convergence: Convergence, connection: Connection[str]) -> None:
    connection.types[LISTENER].outstanding.clear()
    convergence.answered(connection)


def test_the_clocks_stop_at_each_push_and_at_the_last_changed_proxys_answer() -> None:
    clock, pushes, changes = Clock(), [], []
    convergence = Convergence(pushes.append, changes.append, clock)
    a, b, untouched = _connection("a"), _connection("b"), _connection("c")
    convergence.changed()
    clock.now = 1.0
    convergence.changed()  # same burst: the clock started at the first event
    convergence.rebuilt(["a", "b"], [a, b, untouched])
    # An answer to an older response, before this change was pushed, does not count.
    convergence.answered(a)
    clock.now = 1.5
    _send(convergence, a)
    _send(convergence, b)
    _send(convergence, b)  # a second response of the same push is not another push
    assert pushes == [0.5, 0.5]
    clock.now = 2.0
    _answer(convergence, a)
    assert changes == []
    clock.now = 3.5
    _answer(convergence, b)
    assert changes == [3.5]


def test_a_proxy_that_leaves_no_longer_holds_the_clock_and_rescans_are_not_timed() -> None:
    clock, pushes, changes = Clock(), [], []
    convergence = Convergence(pushes.append, changes.append, clock)
    a, b = _connection("a"), _connection("b")
    convergence.rebuilt(["a"], [a])  # a rescan without a file event: pushes timed, no change
    _send(convergence, a)
    _answer(convergence, a)
    assert (pushes, changes) == ([0.0], [])
    convergence.changed()
    convergence.rebuilt(["a", "b"], [a, b])
    _send(convergence, a)
    clock.now = 2.0
    _answer(convergence, a)
    assert changes == []
    convergence.closed(b)
    assert changes == [2.0]
