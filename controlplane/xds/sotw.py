"""State of the world: every response carries all the subscribed resources of its type."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds.connection import TypeState, shared
from controlplane.xds.snapshot import (
    CLUSTER,
    EMPTY,
    LISTENER,
    PUSH_ORDER,
    WILDCARD,
    WILDCARD_TYPES,
    Resources,
)
from controlplane.xds.stream import Response, StreamState

K = TypeVar("K", bound=Hashable)


class SotwProtocol(StreamState[K]):
    __slots__ = ("_sent", "_drop_clusters_after")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent: dict[str, Resources] = {}
        self._drop_clusters_after: str | None = None
        """The nonce of the listener response whose ACK lets the clusters no longer used go."""

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[Response]:
        state = self._connection.types.setdefault(request.type_url, TypeState())
        follow_up: list[Response] = []
        if request.response_nonce:
            error = request.error_detail.message if request.HasField("error_detail") else None
            self._record_reply(request.type_url, request.response_nonce, error)
            follow_up = self._after_listener_reply(request)
            if request.response_nonce != state.nonce:
                return follow_up  # answers a response a newer one has replaced: the protocol says ignore it
        names = frozenset(request.resource_names)
        wildcard = request.type_url in WILDCARD_TYPES and (not names or WILDCARD in names)
        subscribed = names - {WILDCARD}
        changed_subscription = (wildcard, subscribed) != (state.wildcard, state.names)
        if changed_subscription:  # an ACK, most requests, repeats the names the stream already holds
            state.wildcard, state.names = wildcard, shared(subscribed)
        if request.response_nonce and not changed_subscription:
            return follow_up
        snapshot = self._snapshot()
        if snapshot is None:
            return []
        if self._behind(snapshot):
            return self.on_change()
        resources = state.subscribed(snapshot.resources(request.type_url))
        if not request.response_nonce and request.version_info and request.version_info == resources.version:
            # A proxy back from a reconnect (to this server or a replica) that already holds exactly this:
            # answering would only make it re-apply its config.
            self._sent[request.type_url] = resources
            state.sent_version = state.acked_version = resources.version
            return []
        return self._send(state, request.type_url, resources)

    def on_change(self) -> list[Response]:
        snapshot = self._snapshot()
        if snapshot is None:
            return []
        self._caught_up(snapshot)
        responses: list[Response] = []
        types = self._connection.types
        clusters_before = self._sent.get(CLUSTER, EMPTY)
        clusters_after = snapshot.resources(CLUSTER)
        removed_clusters = [r for n, r in clusters_before.items.items() if n not in clusters_after.items]
        for type_url in [*PUSH_ORDER, *sorted(set(types) - set(PUSH_ORDER))]:
            state = types.get(type_url)
            if state is None:
                continue
            resources = state.subscribed(snapshot.resources(type_url))
            if type_url == CLUSTER and removed_clusters:
                # Make before break: keep the clusters the current listeners may use until they change.
                resources = Resources.of([*resources.items.values(), *removed_clusters])
            previous = self._sent.get(type_url)
            if previous is None or previous.version != resources.version:
                # Only Listener and Cluster responses must hold the whole state of the world; the others
                # may carry what changed, which for ECDS with modules inside is most of the bytes.
                partial = previous if type_url not in WILDCARD_TYPES else None
                responses += self._send(state, type_url, resources, since=partial)
        if removed_clusters:
            listener_sent = [r for r in responses if r.type_url == LISTENER]
            if listener_sent:
                # Dropped once the proxy has taken the listeners that no longer use them.
                self._drop_clusters_after = listener_sent[-1].nonce
            elif self._drop_clusters_after is None:  # else they go when the listeners sent last are taken
                responses += self._send(types[CLUSTER], CLUSTER, clusters_after)
        return responses

    def _after_listener_reply(self, request: discovery_pb2.DiscoveryRequest) -> list[Response]:
        if request.type_url != LISTENER or request.response_nonce != self._drop_clusters_after:
            return []
        self._drop_clusters_after = None
        snapshot = self._snapshot()
        if request.HasField("error_detail") or snapshot is None:
            return []  # the listeners that use them may still be there: the next change tries again
        state = self._connection.types[CLUSTER]
        return self._send(state, CLUSTER, state.subscribed(snapshot.resources(CLUSTER)))

    def _send(
        self, state: TypeState, type_url: str, resources: Resources, since: Resources | None = None
    ) -> list[Response]:
        """`since`: what the proxy was sent before; only the resources that differ from it are sent."""
        if not state.wildcard and not resources.items:
            # Envoy takes an empty answer to a named subscription as a config with no resource and rejects
            # it; a name that does not exist yet is answered when it appears.
            return []
        self._sent[type_url] = resources
        carried = resources
        if since is not None:
            changed, _ = resources.difference_from(since)
            if not changed:
                return []  # only names the proxy no longer asks for went away
            carried = resources.subset(frozenset(changed))
        body = carried.sotw_body(type_url, resources.version)
        return [self._response(state, type_url, resources.version, carried.names, body)]
