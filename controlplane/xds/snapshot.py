"""Immutable sets of resources, versioned by their content."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

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


def make_resource(message: Message) -> Resource:
    body = any_pb2.Any()
    body.Pack(message, deterministic=True)
    return Resource(message.name, _digest([body.value]), body)


@dataclass(frozen=True)
class Resources:
    """The resources of one type."""

    items: Mapping[str, Resource]
    version: str

    @staticmethod
    def of(resources: Iterable[Resource]) -> Resources:
        items = {r.name: r for r in sorted(resources, key=lambda r: r.name)}
        return Resources(items, _digest(f"{r.name}={r.version}".encode() for r in items.values()))

    def subset(self, names: Iterable[str]) -> Resources:
        return Resources.of(self.items[n] for n in names if n in self.items)


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

    @property
    def version(self) -> str:
        return _digest(f"{t}={r.version}".encode() for t, r in sorted(self.by_type.items()))
