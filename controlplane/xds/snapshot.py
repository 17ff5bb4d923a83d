"""Immutable sets of resources, versioned by their content, serialized once.

Every stream of a proxy class shares one snapshot, so each resource is packed, hashed and serialized once
per snapshot, and each response once per (type, subscription), nonce included: the streams of a class write one buffer."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar, cast

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

SERVED_TYPES = frozenset({CLUSTER, LISTENER, EXTENSION_CONFIG})
WILDCARD = "*"
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
"""Types that Envoy requests as a whole, and whose resources are deleted by leaving them out."""

PUSH_ORDER = (CLUSTER, EXTENSION_CONFIG, LISTENER)
"""Make before break: what a listener refers to goes out before the listener."""

REFERENCED_TYPES = frozenset({CLUSTER, EXTENSION_CONFIG})
"""Types whose resources listeners refer to: removed only after the listeners that stopped using them."""

MEMO_ENTRIES = 64
"""Per resource set, the subsets and response bodies kept for reuse; streams of one class ask for the
same few, so more only means a client inventing subscriptions grows memory."""

T = TypeVar("T")

_nonces = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A response ready for the wire, nonce included, shared by every stream of a class it goes to: a
    nonce only has to tell apart the responses of one stream, and a stream sent the same body twice while
    the first is unanswered gets a nonce of its own (`StreamState._response`). So thousands of streams
    share one buffer instead of each holding a copy of a body with modules inside until gRPC sends it."""

    nonce: str
    wire: bytes = field(repr=False)

    @staticmethod
    def of(body: bytes) -> Encoded:
        nonce = f"s{next(_nonces)}"
        return Encoded(nonce, with_nonce(body, nonce))


def _digest(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Resource:
    name: str
    version: str
    body: any_pb2.Any = field(repr=False, compare=False)

    @cached_property
    def delta_entry(self) -> bytes:
        """The serialized `Resource` message of a delta response, made once per snapshot."""
        return discovery_pb2.Resource(name=self.name, version=self.version, resource=self.body).SerializeToString()


_PACKED: dict[int, tuple[Message, Resource]] = {}
"""Resources made, by the identity of their message: the translation shares one message among the proxy
classes it is the same for, so each is packed and hashed once."""


def make_resource(message: Message) -> Resource:
    """The message packed and versioned by its content; it must not change afterwards."""
    packed = _PACKED.get(id(message))
    if packed is not None and packed[0] is message:
        return packed[1]
    resource = pack(message)
    if len(_PACKED) >= 4096:
        _PACKED.clear()
    _PACKED[id(message)] = (message, resource)
    return resource


def pack(message: Message) -> Resource:
    """As `make_resource`, remembered by nobody: for a caller that keeps its resources itself and lets go of
    them (a config with a module of megabytes inside must not outlive its use in a memo)."""
    body = any_pb2.Any()
    body.Pack(message, deterministic=True)
    return Resource(message.name, _digest([body.value]), body)


@dataclass(frozen=True)
class Resources:
    """The resources of one type."""

    items: Mapping[str, Resource]
    version: str
    _memo: dict[object, object] = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def of(resources: Iterable[Resource]) -> Resources:
        items = {r.name: r for r in sorted(resources, key=lambda r: r.name)}
        return Resources(items, _digest(f"{r.name}={r.version}".encode() for r in items.values()))

    @cached_property
    def names(self) -> frozenset[str]:
        return frozenset(self.items)

    def subset(self, names: frozenset[str]) -> Resources:
        """The resources named; streams of a class subscribe to the same names, so it is made once."""
        return self._memoized(("subset", names), lambda: Resources.of(self.items[n] for n in names if n in self.items))

    def difference_from(self, before: Resources) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The names of the resources added or changed since `before`, and of those removed since."""

        def compare() -> tuple[tuple[str, ...], tuple[str, ...]]:
            old = before.items
            changed = tuple(n for n, r in self.items.items() if (o := old.get(n)) is None or o.version != r.version)
            return changed, tuple(n for n in old if n not in self.items)

        return self._memoized(("difference", before.version), compare)

    def sotw_body(self, type_url: str, version: str = "") -> Encoded:
        """A state-of-the-world response carrying these resources; `version`: that of the whole set these
        are part of (default: this set's)."""
        return self._memoized(
            ("sotw", type_url, version),
            lambda: Encoded.of(
                discovery_pb2.DiscoveryResponse(
                    version_info=version or self.version,
                    resources=[r.body for r in self.items.values()],
                    type_url=type_url,
                ).SerializeToString()
            ),
        )

    def delta_body(self, type_url: str, changed: tuple[str, ...], removed: tuple[str, ...]) -> Encoded:
        """A delta response carrying the resources `changed` of this set and the names `removed`. Streams of
        a class that were in step get the same one."""

        def encode() -> Encoded:
            head = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=self.version, type_url=type_url, removed_resources=removed
            ).SerializeToString()
            return Encoded.of(head + b"".join(_field(2, self.items[name].delta_entry) for name in changed))

        return self._memoized(("delta", type_url, changed, removed), encode)

    def _memoized(self, key: object, make: Callable[[], T]) -> T:
        try:
            return cast(T, self._memo[key])
        except KeyError:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            value = self._memo[key] = make()
            return value


EMPTY = Resources.of(())


@dataclass(frozen=True)
class Snapshot:
    by_type: Mapping[str, Resources]

    @staticmethod
    def of(
        messages_by_type: Mapping[str, Iterable[Message]], make: Callable[[Message], Resource] = make_resource
    ) -> Snapshot:
        """`make` may return a resource made before for the same message, so that snapshots share it."""
        return Snapshot({t: Resources.of(make(m) for m in ms) for t, ms in messages_by_type.items()})

    def resources(self, type_url: str) -> Resources:
        return self.by_type.get(type_url, EMPTY)

    @cached_property
    def version(self) -> str:
        return _digest(f"{t}={r.version}".encode() for t, r in sorted(self.by_type.items()))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: messages may be concatenated field by field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def with_nonce(body: bytes, nonce: str) -> bytes:
    """A response body given its nonce: field 5 is the nonce in both DiscoveryResponse and
    DeltaDiscoveryResponse, and a field appended to a serialized message is part of it."""
    return body + _field(5, nonce.encode())
