"""What the server knows of one proxy stream: who it is, and per type what it asked for, what it was
sent and what it answered. The admin view shows this."""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from controlplane.xds.snapshot import Resources

K = TypeVar("K", bound=Hashable)
H = TypeVar("H", bound=Hashable)

SHARED_BUDGET = 100_000
"""How much `shared` keeps, a subscription counting one per name: streams of a class hold the same few
values, so more only means clients that invent names or labels; past it, what was kept is let go (streams
keep their copies) and sharing starts again."""


class _Shared:
    def __init__(self, budget: int) -> None:
        self._values: dict[Hashable, Hashable] = {}
        self._held = 0
        self._budget = budget

    def __call__(self, value: H) -> H:
        """The one copy of `value` that every stream holding an equal one keeps: its proxy class, the names
        it subscribes to. Thousands of streams of a class ask for the same names, and each holding its own
        copy of them (strings parsed from its request) would cost more than all else an idle stream keeps."""
        try:
            return self._values[value]  # type: ignore[return-value]
        except KeyError:
            size = len(value) if isinstance(value, frozenset) else 1
            if self._held + size > self._budget:
                self._values.clear()
                self._held = 0
            if size <= self._budget:
                self._values[value] = value
                self._held += size
            return value

    @property
    def held(self) -> int:
        """What is kept, counted as the budget counts it."""
        return self._held


shared = _Shared(SHARED_BUDGET)


class InvalidNode(ValueError):
    """The node of a stream's first request does not say which resources it should get."""


@dataclass(frozen=True, slots=True)
class Outstanding:
    """A response the proxy has not answered yet."""

    version: str
    names: frozenset[str]
    """The resources it carried, updated or removed."""
    sent_at: float
    """`time.monotonic()` when it was handed to the stream."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A proxy's answer to one of its responses: an ACK (`error` None) or a NACK."""

    type_url: str
    nonce: str
    version: str
    """The version of the response answered."""
    error: str | None
    seconds: float
    """From the response being sent to its answer."""
    news: bool
    """A NACK of something this proxy had not already rejected with the same message; always true for an ACK."""


MAX_OUTSTANDING = 16
"""Answers to older responses than this are dropped: a proxy answers every response, in order."""


@dataclass(slots=True)
class TypeState:
    wildcard: bool = False
    """Subscribed to every resource of the type, besides any names."""
    names: frozenset[str] = frozenset()
    """The names subscribed to explicitly; they stay subscribed when the wildcard is dropped."""
    nonce: str = ""
    """The nonce of the latest response; a request carrying another one answers an older response."""
    sent_version: str = ""
    acked_version: str = ""
    rejected_version: str = ""
    error: str = ""
    """The error_detail of the last NACK, cleared once every resource it rejected was accepted since."""
    known: dict[str, str] = field(default_factory=dict)
    """Name to version of every resource the proxy holds, as far as the server knows (delta)."""
    known_as: Resources | None = None
    """The resource set `known` equals exactly, when it does: the next push then compares two sets that
    every stream of the class shares, not this stream's names one by one (delta)."""
    outstanding: dict[str, Outstanding] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    dropped_unanswered: bool = False
    """A response was forgotten before the proxy answered it: its nonce may be answered any time, so no
    response of this type may be sent under a nonce it had."""
    """Resource name to the error of the NACK that rejected it, until a later response with it is ACKed."""

    def subscribed(self, available: Resources) -> Resources:
        return available if self.wildcard else available.subset(self.names)

    def sending(self, nonce: str, version: str, names: frozenset[str]) -> None:
        self.nonce, self.sent_version = nonce, version
        self.outstanding[nonce] = Outstanding(version, names, time.monotonic())
        while len(self.outstanding) > MAX_OUTSTANDING:
            del self.outstanding[next(iter(self.outstanding))]
            self.dropped_unanswered = True


@dataclass(slots=True)
class Connection(Generic[K]):
    node_id: str
    key: K
    protocol: str
    """"sotw" or "delta"."""
    connected_at: float
    types: dict[str, TypeState] = field(default_factory=dict)

    def record_reply(self, type_url: str, nonce: str, error: str | None) -> Reply | None:
        """Records the ACK (error None) or NACK of the response with `nonce`, any of those not answered yet:
        when a push sends two responses of one type, the first may be rejected and the second accepted.
        None when the nonce names no response awaiting an answer: such a request answers nothing."""
        state = self.types[type_url]
        answered = state.outstanding.pop(nonce, None)
        if answered is None:
            return None
        seconds = time.monotonic() - answered.sent_at
        if error is None:
            state.acked_version = answered.version
            for name in answered.names:
                state.rejected.pop(name, None)
            if not state.rejected:
                state.error = ""
            return Reply(type_url, nonce, answered.version, None, seconds, True)
        news = (state.rejected_version, state.error) != (answered.version, error)
        state.rejected.update(dict.fromkeys(answered.names, error))
        state.rejected_version, state.error = answered.version, error
        return Reply(type_url, nonce, answered.version, error, seconds, news)


def printable(text: str, limit: int = 200) -> str:
    """Text a proxy sent, made safe for one log line: control characters escaped (a newline in a node id
    must not forge a line), and cut at `limit` characters."""
    escaped = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return escaped if len(escaped) <= limit else f"{escaped[:limit]}...({len(text)} chars)"
