"""What a proxy says about itself in its bootstrap, as Istio's proxies say it."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2

from controlplane.model import ProxyClass, labels_from
from controlplane.source.documents import DEFAULT_NAMESPACE
from controlplane.translate.selection import GATEWAY_NAME_LABEL
from controlplane.xds.connection import InvalidNode


def proxy_class(node: base_pb2.Node, standalone_ecds: bool = False) -> ProxyClass:
    """From `node.metadata`: NAMESPACE (a string) and LABELS (a map of strings); `standalone_ecds` for a
    stream of the extension-config service rather than ADS."""
    fields = node.metadata.fields
    namespace = DEFAULT_NAMESPACE
    if "NAMESPACE" in fields:
        value = fields["NAMESPACE"]
        if value.WhichOneof("kind") != "string_value" or not value.string_value:
            raise InvalidNode(f"node {node.id!r}: metadata.NAMESPACE must be a non-empty string")
        namespace = value.string_value
    labels: dict[str, str] = {}
    if "LABELS" in fields:
        value = fields["LABELS"]
        if value.WhichOneof("kind") != "struct_value":
            raise InvalidNode(f"node {node.id!r}: metadata.LABELS must be a map of strings")
        for key, label in value.struct_value.fields.items():
            if label.WhichOneof("kind") != "string_value":
                raise InvalidNode(f"node {node.id!r}: metadata.LABELS.{key} must be a string")
            labels[key] = label.string_value
    return ProxyClass(namespace, labels_from(labels), standalone_ecds, gateway=is_gateway(node.id, labels))


ROUTER_PREFIX = "router~"
"""How an Istio gateway's node id begins (`router~IP~POD.NS~NS.svc.cluster.local`); sidecars' begin `sidecar~`."""


def is_gateway(node_id: str, labels: dict[str, str]) -> bool:
    """Istio knows a gateway by its node id; a Gateway API gateway also carries the gateway-name label."""
    return node_id.startswith(ROUTER_PREFIX) or GATEWAY_NAME_LABEL in labels
