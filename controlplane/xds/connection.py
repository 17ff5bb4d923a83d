"""What the server knows of one proxy stream: who it is, and per type what it asked for, what it was
sent and what it answered. The admin view shows this."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class InvalidNode(ValueError):
    """The node of a stream's first request does not say which resources it should get."""


@dataclass
class TypeState:
    names: frozenset[str] | None = None
    """The subscribed names; None: every resource of the type (wildcard)."""
    nonce: str = ""
    """The nonce of the latest response; a request carrying another one answers an older response."""
    sent_version: str = ""
    acked_version: str = ""
    rejected_version: str = ""
    error: str = ""
    """The error_detail of the last NACK, cleared by the next ACK."""
    known: dict[str, str] = field(default_factory=dict)
    """Name to version of every resource the proxy holds, as far as the server knows (delta)."""


@dataclass
class Connection(Generic[K]):
    node_id: str
    key: K
    protocol: str
    """"sotw" or "delta"."""
    connected_at: float
    types: dict[str, TypeState] = field(default_factory=dict)

    def record_reply(self, type_url: str, version: str, error: str | None) -> bool:
        """Records an ACK (error None) or NACK of the latest response; True when this NACK is new, so that
        a proxy that keeps rejecting the same thing is logged once."""
        state = self.types[type_url]
        if error is None:
            state.acked_version, state.error = version, ""
            return False
        new = (state.rejected_version, state.error) != (state.sent_version, error)
        state.rejected_version, state.error = state.sent_version, error
        return new
