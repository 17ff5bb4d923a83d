"""How a proxy reaches the control plane over TLS: an upstream TLS transport socket whose certificates
are the bootstrap's static secrets, named here. The bootstrap defines them from files on the proxy's side;
the module cluster the control plane sends names them, so it never needs to know the proxy's paths."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

TRUSTED_CA_SECRET = "controlplane-trusted-ca"
"""The CA that signed the control plane's certificate."""
CLIENT_CERT_SECRET = "controlplane-client-cert"
"""The proxy's own certificate and key, for mTLS."""
TLS_SOCKET = "envoy.transport_sockets.tls"


def upstream_tls(client_certificate: bool) -> base_pb2.TransportSocket:
    common = tls_pb2.CommonTlsContext(
        validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(name=TRUSTED_CA_SECRET),
    )
    if client_certificate:
        common.tls_certificate_sds_secret_configs.append(secret_pb2.SdsSecretConfig(name=CLIENT_CERT_SECRET))
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common)
    socket = base_pb2.TransportSocket(name=TLS_SOCKET)
    socket.typed_config.Pack(context)
    return socket
