"""An Envoy bootstrap that connects a proxy to the control plane over ADS (state of the world or delta),
built from Envoy's typed `Bootstrap` message as every resource the server sends is."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import duration_pb2

from controlplane.translate.resources import endpoint_cluster, socket_address, speak_http2

XDS_CLUSTER = "xds-grpc"
TRUSTED_CA_SECRET = "controlplane-trusted-ca"
"""The CA that signed the control plane's certificate: a static secret of the bootstrap."""
CLIENT_CERT_SECRET = "controlplane-client-cert"
"""The proxy's own certificate and key, for mTLS."""


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
    other_xds_addresses: Sequence[tuple[str, int]] = (),
) -> bootstrap_pb2.Bootstrap:
    """The proxy says who it is as Istio's proxies do (`node.metadata` NAMESPACE and LABELS) and takes its
    clusters and listeners, and through them the plugins' ECDS configs, from one ADS stream.

    `other_xds_addresses`: more replicas of the control plane. Each address is resolved by DNS (a name of
    several replicas, such as a headless Service, gives one endpoint each); the ADS stream goes to one of
    them and, when it breaks, reconnects to another, which sends nothing new: versions are content hashes."""
    node = base_pb2.Node(id=node_id, cluster=f"{labels.get('app', node_id)}.{namespace}")
    node.metadata.update({"NAMESPACE": namespace, "LABELS": dict(labels)})
    # STRICT_DNS whatever the address: a name (a compose service, a Kubernetes Service) is the usual case,
    # and an IP address resolves to itself.
    xds = endpoint_cluster(XDS_CLUSTER, xds_host, xds_port, resolve=True)
    for host, port in other_xds_addresses:
        xds.load_assignment.endpoints[0].lb_endpoints.append(
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=socket_address(host, port))
            )
        )
    # gRPC; pings find a replica that vanished without closing the connection (its node lost), so the
    # stream moves to another one.
    speak_http2(
        xds,
        protocol_pb2.KeepaliveSettings(
            interval=duration_pb2.Duration(seconds=30), timeout=duration_pb2.Duration(seconds=5)
        ),
    )
    if tls is not None:
        xds.transport_socket.CopyFrom(_upstream_tls(bool(tls.cert)))
    static = bootstrap_pb2.Bootstrap.StaticResources(clusters=[xds], secrets=_secrets(tls) if tls else [])
    ads = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )
    return bootstrap_pb2.Bootstrap(
        node=node,
        admin=bootstrap_pb2.Admin(address=socket_address(admin_host, admin_port)),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=config_source_pb2.ApiConfigSource.DELTA_GRPC
                if delta
                else config_source_pb2.ApiConfigSource.GRPC,
                transport_api_version=config_source_pb2.V3,
                grpc_services=[
                    grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER)
                    )
                ],
                set_node_on_first_message_only=True,
            ),
            cds_config=ads,
            lds_config=ads,
        ),
        static_resources=static,
    )


def _upstream_tls(client_certificate: bool) -> base_pb2.TransportSocket:
    """TLS to the control plane, with the certificates of the bootstrap's static secrets, which Envoy
    reloads from their files."""
    common = tls_pb2.CommonTlsContext(
        validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(name=TRUSTED_CA_SECRET),
    )
    if client_certificate:
        common.tls_certificate_sds_secret_configs.append(secret_pb2.SdsSecretConfig(name=CLIENT_CERT_SECRET))
    socket = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    socket.typed_config.Pack(tls_pb2.UpstreamTlsContext(common_tls_context=common))
    return socket


def _secrets(tls: EnvoyTls) -> list[secret_pb2.Secret]:
    """Reloaded when a file in their folder changes (or a Kubernetes Secret's `..data` link swaps)."""
    secrets = [
        secret_pb2.Secret(
            name=TRUSTED_CA_SECRET,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=tls.ca), watched_directory=_folder_of(tls.ca)
            ),
        )
    ]
    if tls.cert:
        secrets.append(
            secret_pb2.Secret(
                name=CLIENT_CERT_SECRET,
                tls_certificate=common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(filename=tls.cert),
                    private_key=base_pb2.DataSource(filename=tls.key),
                    watched_directory=_folder_of(tls.cert),
                ),
            )
        )
    return secrets


def _folder_of(path: str) -> base_pb2.WatchedDirectory:
    return base_pb2.WatchedDirectory(path=os.path.dirname(os.path.abspath(path)))
