"""Incremental (delta) xDS: responses carry only what changed, and removals by name."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds.connection import TypeState, shared
from controlplane.xds.snapshot import (
    EXTENSION_CONFIG,
    LISTENER,
    PUSH_ORDER,
    REFERENCED_TYPES,
    WILDCARD,
    WILDCARD_TYPES,
    Resources,
)
from controlplane.xds.stream import Response, StreamState

K = TypeVar("K", bound=Hashable)


class DeltaProtocol(StreamState[K]):
    __slots__ = ("_removals_after",)
    delta = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._removals_after: str | None = None
        """The nonce of the listener response whose ACK lets what the listeners no longer use go."""

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[Response]:
        type_url = request.type_url
        first = type_url not in self._connection.types
        state = self._connection.types.setdefault(type_url, TypeState())
        follow_up: list[Response] = []
        if request.response_nonce:
            error = request.error_detail.message if request.HasField("error_detail") else None
            self._record_reply(type_url, request.response_nonce, error)
            if type_url == LISTENER and request.response_nonce == self._removals_after:
                self._removals_after = None
                # After a NACK the listeners that use them may still be there: the next change tries again.
                follow_up = [] if error is not None else self._removals()
        # Unlike acknowledgements, subscription changes count even on a request with a stale nonce.
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if first:
            state.known = dict(request.initial_resource_versions)
            state.known_as = None
            # A first request naming nothing subscribes to everything of a wildcard type (legacy wildcard).
            state.wildcard = type_url in WILDCARD_TYPES and not subscribe
        state.wildcard = (state.wildcard or WILDCARD in subscribe) and WILDCARD not in unsubscribe
        if subscribe or unsubscribe:  # an ACK, most requests, changes nothing
            state.names = shared(frozenset((state.names | subscribe) - unsubscribe - {WILDCARD}))
        for name in unsubscribe:
            if state.known.pop(name, None) is not None:  # the proxy forgets what it unsubscribes from
                state.known_as = None
        snapshot = self._snapshot()
        if snapshot is None:
            return []
        if self._behind(snapshot):
            return follow_up + self.on_change()
        # A first request (a proxy back from a reconnect) learns at once what is gone; later ones leave what
        # listeners use to the removal pass after the listeners.
        include_removals = first or type_url not in REFERENCED_TYPES
        return follow_up + self._updates(type_url, state, include_removals=include_removals)

    def on_change(self) -> list[Response]:
        snapshot = self._snapshot()
        if snapshot is not None:
            self._caught_up(snapshot)
        types = self._connection.types
        ordered = [*PUSH_ORDER, *sorted(set(types) - set(PUSH_ORDER))]
        # Make before break: what a listener uses is added before the listener and removed after it; a
        # listener's own additions and removals go in one response.
        responses = [
            r
            for t in ordered
            if t in types
            for r in self._updates(t, types[t], include_removals=t not in REFERENCED_TYPES)
        ]
        listener_sent = [r for r in responses if r.type_url == LISTENER]
        if listener_sent:
            # What the listeners used goes once the proxy has taken the listeners that no longer use it.
            self._removals_after = listener_sent[-1].nonce
        elif self._removals_after is None:  # else they go when the listeners sent last are taken
            responses += self._removals()
        return responses

    def _removals(self) -> list[Response]:
        types = self._connection.types
        return [
            r
            for t in reversed(PUSH_ORDER)
            if t in types and t in REFERENCED_TYPES
            for r in self._updates(t, types[t], include_removals=True)
        ]

    def _updates(self, type_url: str, state: TypeState, include_removals: bool) -> list[Response]:
        snapshot = self._snapshot()
        if snapshot is None:
            return []
        available = snapshot.resources(type_url)
        wanted = state.subscribed(available)
        changed, removed = _difference(state, wanted)
        # What the subscription no longer covers goes at once (the proxy asked); what is gone from the
        # snapshot goes only with `include_removals`.
        if not include_removals:
            removed = tuple(n for n in removed if n in available.items)
        if type_url == EXTENSION_CONFIG and not state.wildcard:
            # A removed filter config leaves a listener that still names it answering 500s; it goes only
            # once no listener names it, which is when Envoy unsubscribes from it.
            removed = tuple(n for n in removed if n not in state.names)
        if not changed and not removed:
            return []
        known = state.known
        for name in changed:
            known[name] = wanted.items[name].version
        for name in removed:
            del known[name]
        # Every wanted resource is now known at its version: equal sizes mean nothing else is.
        state.known_as = wanted if len(known) == len(wanted.items) else None
        body = available.delta_body(type_url, changed, removed)
        return [self._response(state, type_url, available.version, frozenset(changed + removed), body)]


def _difference(state: TypeState, wanted: Resources) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The resources of `wanted` the proxy lacks or holds at another version, and the names it holds that
    `wanted` lacks. Streams of a class move between the same sets, so that is worked out once per pair."""
    before = state.known_as
    if before is not None:
        if before.version == wanted.version:
            return (), ()
        return wanted.difference_from(before)
    known = state.known
    changed = tuple(n for n, r in wanted.items.items() if known.get(n) != r.version)
    return changed, tuple(sorted(n for n in known if n not in wanted.items))
