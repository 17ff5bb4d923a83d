"""An Envoy bootstrap that connects a proxy to the control plane over ADS, as a plain mapping."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from controlplane.render import message_as_dict
from controlplane.translate.transport import CLIENT_CERT_SECRET, TRUSTED_CA_SECRET, upstream_tls

XDS_CLUSTER = "xds-grpc"


@dataclass(frozen=True)
class EnvoyTls:
    """Files on the proxy's side: the CA that signed the control plane's certificate, and for mTLS the
    proxy's own certificate and key. Envoy watches their folders and reloads them when they change."""

    ca: str
    cert: str = ""
    key: str = ""


def envoy_bootstrap(
    node_id: str,
    namespace: str,
    labels: dict[str, str],
    xds_host: str,
    xds_port: int,
    admin_port: int = 9901,
    admin_host: str = "127.0.0.1",
    delta: bool = False,
    tls: EnvoyTls | None = None,
) -> dict[str, Any]:
    app = labels.get("app", node_id)
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "5s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": xds_host, "port_value": xds_port}}}}
                    ]
                }
            ],
        },
    }
    static_resources: dict[str, Any] = {"clusters": [xds_cluster]}
    if tls is not None:
        # The module cluster the control plane sends names the same secrets.
        xds_cluster["transport_socket"] = message_as_dict(upstream_tls(bool(tls.cert)))
        static_resources["secrets"] = _secrets(tls)
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
        "static_resources": static_resources,
    }


def _secrets(tls: EnvoyTls) -> list[dict[str, Any]]:
    secrets: list[dict[str, Any]] = [
        {
            "name": TRUSTED_CA_SECRET,
            "validation_context": {
                "trusted_ca": {"filename": tls.ca},
                "watched_directory": {"path": os.path.dirname(os.path.abspath(tls.ca))},
            },
        },
    ]
    if tls.cert:
        secrets.append(
            {
                "name": CLIENT_CERT_SECRET,
                "tls_certificate": {
                    "certificate_chain": {"filename": tls.cert},
                    "private_key": {"filename": tls.key},
                    # Reloaded when a file in it changes (or a Kubernetes Secret's `..data` link swaps).
                    "watched_directory": {"path": os.path.dirname(os.path.abspath(tls.cert))},
                },
            }
        )
    return secrets
