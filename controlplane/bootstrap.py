"""An Envoy bootstrap that connects a proxy to the control plane over ADS (state of the world or delta),
built from Envoy's typed `Bootstrap` message as every resource the server sends is."""

from __future__ import annotations

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2

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
) -> bootstrap_pb2.Bootstrap:
    """The proxy says who it is as Istio's proxies do (`node.metadata` NAMESPACE and LABELS) and takes its
    clusters and listeners, and through them the plugins' ECDS configs, from one ADS stream."""
    node = base_pb2.Node(id=node_id, cluster=f"{labels.get('app', node_id)}.{namespace}")
    node.metadata.update({"NAMESPACE": namespace, "LABELS": dict(labels)})
    # STRICT_DNS whatever the address: a name (a compose service, a Kubernetes Service) is the usual case,
    # and an IP address resolves to itself.
    xds = endpoint_cluster(XDS_CLUSTER, xds_host, xds_port, resolve=True)
    speak_http2(xds)  # gRPC
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
