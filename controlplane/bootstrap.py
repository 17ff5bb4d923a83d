"""An Envoy bootstrap that connects a proxy to the control plane over ADS (state of the world or delta),
built from Envoy's typed `Bootstrap` message as every resource the server sends is."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from google.protobuf import duration_pb2

from controlplane.translate.resources import endpoint_cluster, socket_address, speak_http2

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
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(clusters=[xds]),
    )
