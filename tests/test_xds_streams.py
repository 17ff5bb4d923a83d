"""The state-of-the-world and delta protocols against a fake stream, as go-control-plane's server tests
drive theirs: a proxy's requests go in one at a time, the snapshot changes between them, and what the
protocol answers is checked response by response. In-process and at the protocols' public interface
(`on_request`, `on_change`, and the per-type state of the connection that the admin view shows); the
orderings that need a real Envoy or a real gRPC stream are in test_ads_protocol.py and test_end_to_end.py."""

from __future__ import annotations

import itertools
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from controlplane.xds.connection import SHARED_BUDGET, Connection, TypeState, shared
from controlplane.xds.delta import DeltaProtocol
from controlplane.xds.snapshot import CLUSTER, EXTENSION_CONFIG, LISTENER, Snapshot
from controlplane.xds.sotw import SotwProtocol
from tests.support import resource_names as names

PLUGIN = "extensions.istio.io/wasmplugin/default."


def snapshot(clusters: tuple[str, ...], plugins: dict[str, str], listener: str = "") -> Snapshot:
    """Clusters by name, plugin configs by name with a content, and one listener naming every plugin (its
    `stat_prefix` stands for the rest of its content)."""
    configs = []
    for name, content in plugins.items():
        config = extension_pb2.TypedExtensionConfig(name=PLUGIN + name)
        config.typed_config.Pack(any_pb2.Any(type_url="example/config", value=content.encode()))
        configs.append(config)
    listeners = [listener_pb2.Listener(name="inbound|80", stat_prefix=listener or ",".join(sorted(plugins)))]
    return Snapshot.of(
        {
            CLUSTER: [cluster_pb2.Cluster(name=n) for n in clusters],
            EXTENSION_CONFIG: configs,
            LISTENER: listeners,
        }
    )


class FakeStream:
    """One proxy's stream: requests in, the protocol's responses out, and a snapshot that can change."""

    def __init__(self, delta: bool, current: Snapshot) -> None:
        self.current = current
        self.delta = delta
        self.connection: Connection[str] = Connection("proxy-1", "class", "delta" if delta else "sotw", 0.0)
        protocol = DeltaProtocol if delta else SotwProtocol
        self.protocol: Any = protocol(self.connection, lambda: self.current, itertools.count(1))
        self._names: dict[str, list[str]] = {}
        """SotW: the names each type was last asked for; every request repeats the whole subscription."""

    def send(self, type_url: str, nonce: str = "", error: str = "", **fields: Any) -> list[Any]:
        if self.delta:
            request: Any = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce, **fields)
        else:
            fields.setdefault("resource_names", self._names.get(type_url, []))
            self._names[type_url] = list(fields["resource_names"])
            request = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce, **fields)
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        return [_decoded(r) for r in self.protocol.on_request(request)]

    def ack(self, response: Any, **fields: Any) -> list[Any]:
        if not self.delta:
            fields.setdefault("version_info", response.version_info)
        return self.send(response.type_url, nonce=response.nonce, **fields)

    def nack(self, response: Any, error: str, **fields: Any) -> list[Any]:
        return self.send(response.type_url, nonce=response.nonce, error=error, **fields)

    def change(self, new: Snapshot) -> list[Any]:
        self.current = new
        return [_decoded(r) for r in self.protocol.on_change()]

    def state(self, type_url: str) -> TypeState:
        return self.connection.types[type_url]


def _decoded(response: Any) -> Any:
    """As the proxy reads it: a protocol may hand over the response encoded for the wire."""
    return response.message() if hasattr(response, "message") else response


def kinds(responses: list[Any]) -> list[str]:
    return [r.type_url.rsplit(".", 1)[-1] for r in responses]


def subscribe_all(stream: FakeStream, plugin_names: list[str]) -> dict[str, Any]:
    """CDS, ECDS for `plugin_names` and LDS, each answered and ACKed, as Envoy starts a stream."""
    answered = {}
    for type_url, subscription in (
        (CLUSTER, []),
        (EXTENSION_CONFIG, [PLUGIN + n for n in plugin_names]),
        (LISTENER, []),
    ):
        field = "resource_names_subscribe" if stream.delta else "resource_names"
        [response] = stream.send(type_url, **{field: subscription})
        assert stream.ack(response) == []
        answered[type_url] = response
    return answered


BASE = snapshot(("wasm-modules",), {"a": "v1"})


# --- state of the world -----------------------------------------------------------------------------------


def test_sotw_an_ack_is_recorded_and_not_answered() -> None:
    stream = FakeStream(delta=False, current=BASE)
    [clusters] = stream.send(CLUSTER)
    assert names(clusters) == ["wasm-modules"]
    assert stream.ack(clusters) == []
    state = stream.state(CLUSTER)
    assert state.acked_version == state.sent_version == clusters.version_info and state.error == ""


def test_sotw_a_nack_is_recorded_and_not_resent_and_the_next_change_goes_out() -> None:
    stream = FakeStream(delta=False, current=BASE)
    [listeners] = stream.send(LISTENER)
    assert stream.nack(listeners, "cannot bind") == []
    state = stream.state(LISTENER)
    assert (state.error, state.rejected_version) == ("cannot bind", listeners.version_info)
    assert stream.send(LISTENER, nonce=listeners.nonce) == [], "the same request again: nothing is resent"
    assert stream.change(BASE) == [], "no change, no push"
    [fixed] = stream.change(snapshot(("wasm-modules",), {"a": "v1"}, listener="fixed"))
    assert fixed.type_url == LISTENER and fixed.version_info != listeners.version_info
    assert stream.ack(fixed) == []
    assert stream.state(LISTENER).error == "", "cleared once what it rejected was accepted since"


def test_sotw_a_request_answering_an_older_response_is_ignored() -> None:
    stream = FakeStream(delta=False, current=BASE)
    [first] = stream.send(EXTENSION_CONFIG, resource_names=[PLUGIN + "a"])
    [second] = stream.change(snapshot(("wasm-modules",), {"a": "v2", "b": "v1"}))
    assert second.nonce != first.nonce
    stale = stream.send(EXTENSION_CONFIG, nonce=first.nonce, resource_names=[PLUGIN + "a", PLUGIN + "b"])
    assert stale == [], "a new subscription on a stale nonce is not answered"
    [current] = stream.send(EXTENSION_CONFIG, nonce=second.nonce, resource_names=[PLUGIN + "a", PLUGIN + "b"])
    assert names(current) == [PLUGIN + "a", PLUGIN + "b"]


def test_sotw_what_a_listener_uses_goes_out_before_it() -> None:
    stream = FakeStream(delta=False, current=BASE)
    subscribe_all(stream, ["a", "b"])
    pushed = stream.change(snapshot(("wasm-modules", "inbound|80||"), {"a": "v1", "b": "v1"}))
    assert kinds(pushed) == ["Cluster", "TypedExtensionConfig", "Listener"]
    assert names(pushed[1]) == [PLUGIN + "b"], "ECDS responses carry what changed: the new config"


def test_sotw_clusters_stay_while_a_listener_that_drops_them_is_rejected() -> None:
    stream = FakeStream(delta=False, current=snapshot(("wasm-modules", "inbound|80||"), {"a": "v1"}))
    subscribe_all(stream, ["a"])
    pushed = stream.change(snapshot(("wasm-modules",), {"a": "v1"}, listener="without the cluster"))
    assert kinds(pushed) == ["Listener"], "the cluster the old listener uses stays until the new one is taken"
    assert stream.nack(pushed[0], "bad listener") == [], "after a NACK the old listener may still use it"
    [fixed] = stream.change(snapshot(("wasm-modules",), {"a": "v1"}, listener="fixed"))
    assert fixed.type_url == LISTENER
    [dropped] = stream.ack(fixed)
    assert dropped.type_url == CLUSTER and names(dropped) == ["wasm-modules"]


# --- delta -----------------------------------------------------------------------------------------------


def test_delta_an_ack_is_recorded_a_nack_too_and_neither_is_answered() -> None:
    stream = FakeStream(delta=True, current=BASE)
    [clusters] = stream.send(CLUSTER)
    assert stream.ack(clusters) == []
    assert stream.state(CLUSTER).acked_version == clusters.system_version_info
    [listeners] = stream.send(LISTENER)
    assert stream.nack(listeners, "cannot bind") == []
    state = stream.state(LISTENER)
    assert (state.error, state.rejected_version) == ("cannot bind", listeners.system_version_info)
    assert stream.change(BASE) == [], "a rejected resource is not sent again until it changes"


def test_delta_what_a_listener_uses_goes_out_before_it_and_its_removal_after() -> None:
    stream = FakeStream(delta=True, current=BASE)
    subscribe_all(stream, ["a", "b"])
    pushed = stream.change(snapshot(("wasm-modules", "inbound|80||"), {"a": "v1", "b": "v1"}))
    assert kinds(pushed) == ["Cluster", "TypedExtensionConfig", "Listener"]
    assert names(pushed[0]) == ["inbound|80||"] and names(pushed[1]) == [PLUGIN + "b"], "changes only"
    for response in pushed:
        assert stream.ack(response) == []
    [listener] = stream.change(snapshot(("wasm-modules",), {"a": "v1"}))
    assert listener.type_url == LISTENER, "the listener stops using the cluster and plugin b first"
    [removal] = stream.ack(listener)
    assert removal.type_url == CLUSTER and list(removal.removed_resources) == ["inbound|80||"]
    assert PLUGIN + "b" in stream.state(EXTENSION_CONFIG).known, "b's config stays while Envoy subscribes to it"
    assert stream.send(EXTENSION_CONFIG, resource_names_unsubscribe=[PLUGIN + "b"]) == []
    assert PLUGIN + "b" not in stream.state(EXTENSION_CONFIG).known


def test_delta_clusters_stay_while_a_listener_that_drops_them_is_rejected() -> None:
    stream = FakeStream(delta=True, current=snapshot(("wasm-modules", "inbound|80||"), {"a": "v1"}))
    subscribe_all(stream, ["a"])
    [listener] = stream.change(snapshot(("wasm-modules",), {"a": "v1"}, listener="without the cluster"))
    assert stream.nack(listener, "bad listener") == []
    assert "inbound|80||" in stream.state(CLUSTER).known


def test_delta_names_subscribed_and_unsubscribed_one_by_one() -> None:
    stream = FakeStream(delta=True, current=snapshot(("wasm-modules",), {"a": "v1", "b": "v1"}))
    [first] = stream.send(EXTENSION_CONFIG, resource_names_subscribe=[PLUGIN + "a"])
    assert names(first) == [PLUGIN + "a"]
    [second] = stream.send(EXTENSION_CONFIG, nonce=first.nonce, resource_names_subscribe=[PLUGIN + "b"])
    assert names(second) == [PLUGIN + "b"], "only what the new subscription adds"
    assert stream.send(EXTENSION_CONFIG, nonce=second.nonce, resource_names_unsubscribe=[PLUGIN + "a"]) == []
    [changed] = stream.change(snapshot(("wasm-modules",), {"a": "v2", "b": "v2"}))
    assert names(changed) == [PLUGIN + "b"], "a is no longer subscribed"
    assert stream.send(EXTENSION_CONFIG, resource_names_subscribe=[PLUGIN + "missing"]) == [], "answered once it exists"


def test_delta_a_stream_that_starts_with_versions_gets_only_what_differs() -> None:
    holding = FakeStream(delta=True, current=snapshot(("wasm-modules", "inbound|80||"), {}))
    [clusters] = holding.send(CLUSTER)
    versions = {r.name: r.version for r in clusters.resources}

    same = FakeStream(delta=True, current=holding.current)
    assert same.send(CLUSTER, initial_resource_versions=versions) == [], "a reconnect holding all of it"
    stale = FakeStream(delta=True, current=holding.current)
    [update] = stale.send(CLUSTER, initial_resource_versions={**versions, "wasm-modules": "old", "inbound|9||": "gone"})
    assert names(update) == ["wasm-modules"]
    assert list(update.removed_resources) == ["inbound|9||"]


# --- what an idle stream holds ------------------------------------------------------------------------------


def test_a_response_sent_again_before_its_answer_gets_a_nonce_of_its_own() -> None:
    """A proxy that repeats a request before answering gets the same resources again; its answers must still
    say which response each one answers."""
    stream = FakeStream(delta=False, current=snapshot(("wasm-modules",), {"a": "v1"}))
    [first] = stream.send(EXTENSION_CONFIG, resource_names=[PLUGIN + "a"])
    [again] = stream.send(EXTENSION_CONFIG, resource_names=[PLUGIN + "a"])
    assert first.resources == again.resources
    assert first.nonce != again.nonce
    assert set(stream.state(EXTENSION_CONFIG).outstanding) == {first.nonce, again.nonce}
    assert stream.ack(first) == [] and stream.ack(again) == []
    assert stream.state(EXTENSION_CONFIG).outstanding == {}
    assert stream.state(EXTENSION_CONFIG).acked_version == again.version_info


def test_streams_of_a_class_share_their_subscriptions_and_response_bodies() -> None:
    """Thousands of streams of a class each holding its own copy of the names it asked for, or of a response
    body with modules inside, would cost more than all else a stream keeps."""
    plugins = {name: "v1" for name in ("a", "b", "c")}
    for delta in (False, True):
        current = snapshot(("wasm-modules",), plugins)
        streams = [FakeStream(delta, current) for _ in range(2)]
        field = "resource_names_subscribe" if delta else "resource_names"
        first, second = (
            s.protocol.on_request(
                (discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest)(
                    type_url=EXTENSION_CONFIG, **{field: [PLUGIN + n for n in plugins]}
                )
            )
            for s in streams
        )
        [one], [other] = first, second
        assert one.encoded is other.encoded, "one buffer for every stream of the class, nonce included"
        assert _decoded(one).nonce == one.nonce == other.nonce
        names_held = [s.state(EXTENSION_CONFIG).names for s in streams]
        assert names_held[0] == {PLUGIN + n for n in plugins}
        assert names_held[0] is names_held[1], "one copy of a subscription for every stream asking for it"


def test_a_nonce_forgotten_unanswered_is_never_sent_again() -> None:
    """A stream keeps the last 16 responses it awaits answers to; an answer to an older one may still come,
    so a response sent again later must not reuse its nonce, or that late answer would be taken for its."""
    plugins = {"a": "v1", "b": "v1"}
    stream = FakeStream(delta=True, current=snapshot(("wasm-modules",), plugins))
    [first] = stream.send(EXTENSION_CONFIG, resource_names_subscribe=[PLUGIN + "a"])
    for _ in range(16):  # none answered
        stream.send(EXTENSION_CONFIG, resource_names_subscribe=[PLUGIN + "b"])
        stream.send(EXTENSION_CONFIG, resource_names_unsubscribe=[PLUGIN + "b"])
    assert first.nonce not in stream.state(EXTENSION_CONFIG).outstanding
    stream.send(EXTENSION_CONFIG, resource_names_unsubscribe=[PLUGIN + "a"])
    [again] = stream.send(EXTENSION_CONFIG, resource_names_subscribe=[PLUGIN + "a"])
    assert names(again) == names(first) == [PLUGIN + "a"]
    assert again.nonce != first.nonce
    stream.nack(first, "late answer to the first")
    assert stream.state(EXTENSION_CONFIG).rejected == {}, "the late NACK is not taken for the new response's"


def test_what_streams_share_is_bounded() -> None:
    """A client inventing ever larger subscriptions (one more name per request) cannot grow it."""
    growing = [frozenset(f"{PLUGIN}p{i}" for i in range(size)) for size in range(1, 1_001)]
    assert [shared(names) for names in growing] == growing
    assert shared.held <= SHARED_BUDGET
