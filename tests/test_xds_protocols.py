"""The state-of-the-world and delta protocol classes driven directly, request by request, for orderings a
real stream produces only by chance (an ACK already queued when a change lands)."""

from __future__ import annotations

import itertools
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.admin import metrics_text
from controlplane.source.directory import LoadedDirectory
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.connection import Connection
from controlplane.xds.delta import DeltaProtocol
from controlplane.xds.server import DiscoveryServer
from controlplane.xds.snapshot import CLUSTER, LISTENER, Snapshot
from controlplane.xds.sotw import SotwProtocol


def snapshot(cluster: str, *extra_clusters: str) -> Snapshot:
    """A listener that uses `cluster`."""
    listener = listener_pb2.Listener(name="inbound|80", stat_prefix=cluster)
    clusters = [cluster_pb2.Cluster(name=name) for name in (cluster, *extra_clusters)]
    return Snapshot.of({CLUSTER: clusters, LISTENER: [listener]})


class Current:
    def __init__(self, value: Snapshot) -> None:
        self.value = value

    def __call__(self) -> Snapshot:
        return self.value


def delta_request(
    type_url: str, nonce: str = "", subscribe: list[str] | None = None, unsubscribe: list[str] | None = None
) -> discovery_pb2.DeltaDiscoveryRequest:
    return discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        response_nonce=nonce,
        resource_names_subscribe=subscribe or [],
        resource_names_unsubscribe=unsubscribe or [],
    )


def summary(responses: list[Any]) -> list[tuple[str, list[str], list[str]]]:
    return [
        (r.type_url.rsplit(".", 1)[-1], sorted(x.name for x in m.resources), sorted(m.removed_resources))
        for r in responses
        for m in [r.message()]
    ]


def test_delta_ack_queued_ahead_of_a_change_still_gets_make_before_break() -> None:
    current = Current(snapshot("old"))
    protocol: DeltaProtocol[str] = DeltaProtocol(Connection("p", "k", "delta", 0.0), current, itertools.count())
    nonces = {}
    for type_url in (CLUSTER, LISTENER):
        [response] = protocol.on_request(delta_request(type_url))
        nonces[type_url] = response.nonce
    current.value = snapshot("new")  # the change lands while the CDS ACK waits in the stream's inbox
    responses = protocol.on_request(delta_request(CLUSTER, nonce=nonces[CLUSTER]))
    assert summary(responses) == [("Cluster", ["new"], []), ("Listener", ["inbound|80"], [])]
    assert protocol.on_change() == []
    after = protocol.on_request(delta_request(LISTENER, nonce=responses[1].nonce))
    assert summary(after) == [("Cluster", [], ["old"])], "the cluster goes once the listener is taken"


def test_sotw_resubscription_after_an_unpushed_change_keeps_make_before_break() -> None:
    current = Current(snapshot("old"))
    protocol: SotwProtocol[str] = SotwProtocol(Connection("p", "k", "sotw", 0.0), current, itertools.count())
    [clusters] = protocol.on_request(discovery_pb2.DiscoveryRequest(type_url=CLUSTER))
    [listeners] = protocol.on_request(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
    current.value = snapshot("new")
    responses = protocol.on_request(
        discovery_pb2.DiscoveryRequest(type_url=LISTENER, response_nonce=listeners.nonce, resource_names=["inbound|80"])
    )
    assert [r.type_url for r in responses] == [CLUSTER, LISTENER], "clusters kept, then the listener"
    [dropped] = protocol.on_request(
        discovery_pb2.DiscoveryRequest(
            type_url=LISTENER, response_nonce=responses[1].nonce, resource_names=["inbound|80"]
        )
    )
    assert dropped.type_url == CLUSTER and len(dropped.message().resources) == 1, "stale clusters go once it is taken"


def test_delta_names_subscribed_beside_the_wildcard_stay_when_it_goes() -> None:
    current = Current(snapshot("a", "b", "foo"))
    protocol: DeltaProtocol[str] = DeltaProtocol(Connection("p", "k", "delta", 0.0), current, itertools.count())
    [everything] = protocol.on_request(delta_request(CLUSTER, subscribe=["*", "foo"]))
    assert sorted(r.name for r in everything.message().resources) == ["a", "b", "foo"]
    [narrowed] = protocol.on_request(delta_request(CLUSTER, nonce=everything.nonce, unsubscribe=["*"]))
    assert summary([narrowed]) == [("Cluster", [], ["a", "b"])]


def test_metric_labels_are_escaped_and_unserved_types_are_not_counted() -> None:
    server: DiscoveryServer[str] = DiscoveryServer(SnapshotCache(), lambda node, standalone: "k", ready=None)  # type: ignore[arg-type]
    server.rejections['bogus"} 1\ncontrolplane_ready 0\n#'] += 1
    text = metrics_text(True, LoadedDirectory(), {}, server)
    assert "\ncontrolplane_ready 0" not in text
    assert 'type_url="bogus\\"} 1\\ncontrolplane_ready 0\\n#"} 1' in text
