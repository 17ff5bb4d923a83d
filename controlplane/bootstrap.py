"""An Envoy bootstrap that connects a proxy to the control plane over ADS, as a plain mapping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

XDS_CLUSTER = "xds-grpc"


def envoy_bootstrap(
    node_id: str,
    namespace: str,
    labels: dict[str, str],
    xds_host: str,
    xds_port: int,
    admin_port: int = 9901,
    admin_host: str = "127.0.0.1",
    delta: bool = False,
    other_xds_addresses: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """`other_xds_addresses`: more replicas of the control plane. Each address is resolved by DNS (a name
    of several replicas, such as a headless Service, gives one endpoint each); the ADS stream goes to one of
    them and, when it breaks, reconnects to another, which sends nothing new: versions are content hashes."""
    app = labels.get("app", node_id)
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for host, port in ((xds_host, xds_port), *other_xds_addresses)
    ]
    return {
        "node": {
            "id": node_id,
            "cluster": f"{app}.{namespace}",
            "metadata": {"NAMESPACE": namespace, "LABELS": dict(labels)},
        },
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STRICT_DNS",
                    "connect_timeout": "5s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            # Pings find a replica that vanished without closing the connection (its
                            # node lost), so the stream moves to another one.
                            "explicit_http_config": {
                                "http2_protocol_options": {"connection_keepalive": {"interval": "30s", "timeout": "5s"}}
                            },
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [{"lb_endpoints": endpoints}],
                    },
                }
            ]
        },
    }
