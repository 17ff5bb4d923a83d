"""The time from a file change to the last changed proxy's answer, on made-up streams."""

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


def _send(connection: Connection[str]) -> None:
    connection.types[LISTENER].outstanding["1"] = Outstanding("v", frozenset())


def _answer(connection: Connection[str]) -> None:
    connection.types[LISTENER].outstanding.clear()


def test_the_clock_stops_at_the_last_changed_proxys_answer() -> None:
    clock, observed = Clock(), []
    convergence = Convergence(observed.append, clock)
    a, b, untouched = _connection("a"), _connection("b"), _connection("c")
    convergence.changed()
    clock.now = 1.0
    convergence.changed()  # same burst: the clock started at the first event
    convergence.rebuilt(["a", "b"], [a, b, untouched])
    # An answer to an older response, before this change was pushed, does not count.
    convergence.answered(a, [a, b, untouched])
    for connection in (a, b):
        _send(connection)
        convergence.pushed(connection)
    clock.now = 2.0
    _answer(a)
    convergence.answered(a, [a, b, untouched])
    assert observed == []
    clock.now = 3.5
    _answer(b)
    convergence.answered(b, [a, b, untouched])
    assert observed == [3.5]


def test_a_proxy_that_leaves_no_longer_holds_the_clock_and_rescans_are_not_timed() -> None:
    clock, observed = Clock(), []
    convergence = Convergence(observed.append, clock)
    a, b = _connection("a"), _connection("b")
    convergence.rebuilt(["a"], [a])  # a rescan without a file event
    assert observed == []
    convergence.changed()
    convergence.rebuilt(["a", "b"], [a, b])
    _send(a)
    convergence.pushed(a)
    clock.now = 2.0
    _answer(a)
    convergence.answered(a, [a])  # b disconnected
    assert observed == [2.0]
