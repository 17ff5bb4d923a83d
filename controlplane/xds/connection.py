"""What the server knows of one proxy stream: who it is, and per type what it asked for, what it was
sent and what it answered. The admin view shows this."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from controlplane.xds.snapshot import Resources

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


class InvalidNode(ValueError):
    """The node of a stream's first request does not say which resources it should get."""


@dataclass(frozen=True)
class Outstanding:
    """A response the proxy has not answered yet."""

    version: str
    names: frozenset[str]
    """The resources it carried, updated or removed."""


MAX_OUTSTANDING = 16
"""Answers to older responses than this are dropped: a proxy answers every response, in order."""


@dataclass
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
    outstanding: dict[str, Outstanding] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    """Resource name to the error of the NACK that rejected it, until a later response with it is ACKed."""

    def subscribed(self, available: Resources) -> Resources:
        return available if self.wildcard else available.subset(self.names)

    def sending(self, nonce: str, version: str, names: frozenset[str]) -> None:
        self.nonce, self.sent_version = nonce, version
        self.outstanding[nonce] = Outstanding(version, names)
        while len(self.outstanding) > MAX_OUTSTANDING:
            del self.outstanding[next(iter(self.outstanding))]


@dataclass
class Connection(Generic[K]):
    node_id: str
    key: K
    protocol: str
    """"sotw" or "delta"."""
    connected_at: float
    types: dict[str, TypeState] = field(default_factory=dict)

    def record_reply(self, type_url: str, nonce: str, error: str | None) -> str | None:
        """Records the ACK (error None) or NACK of the response with `nonce`, any of those not answered yet:
        when a push sends two responses of one type, the first may be rejected and the second accepted.
        Returns the rejected version when this NACK is news, so that a proxy that keeps rejecting the same
        thing is logged once."""
        state = self.types[type_url]
        answered = state.outstanding.pop(nonce, None)
        if answered is None:
            return None
        if error is None:
            state.acked_version = answered.version
            for name in answered.names:
                state.rejected.pop(name, None)
            if not state.rejected:
                state.error = ""
            return None
        news = (state.rejected_version, state.error) != (answered.version, error)
        state.rejected.update(dict.fromkeys(answered.names, error))
        state.rejected_version, state.error = answered.version, error
        return answered.version if news else None


def log_rejection(connection: Connection[Any], type_url: str, nonce: str, error: str | None) -> None:
    rejected = connection.record_reply(type_url, nonce, error)
    if rejected is not None:
        log.warning(
            "proxy %s rejected %s version %s: %s", connection.node_id, type_url.rsplit(".", 1)[-1], rejected, error
        )
