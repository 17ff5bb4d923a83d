"""Who may ask for what when the ports speak mTLS: an xDS stream only as the namespace its proxy's
certificate names (a SPIFFE id, as Istio's), a module only by a proxy of a namespace that one of the module's
plugins applies to. Without mTLS, whoever reaches the ports (loopback unless told otherwise)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controlplane.http_server import Request
from controlplane.identity import auth_context_uris, certificate_namespace, may_fetch_module, namespace_refusal
from controlplane.model import Config, ModuleKey, ModuleStatus, ProxyClass
from controlplane.xds.server import StreamOpening, StreamRefused


@dataclass(frozen=True)
class ProxyAccess:
    mutual: bool
    """Clients present certificates signed by the client CA: only then is there an identity to check."""
    trust_domain: str
    root_namespace: str
    config: Callable[[], Config]
    statuses: Callable[[], Mapping[ModuleKey, ModuleStatus]]

    def admit(self, opening: StreamOpening[ProxyClass]) -> None:
        """The discovery server's stream-open hook: a proxy asking as another namespace is refused."""
        if not self.mutual:
            return
        refusal = namespace_refusal(opening.key.namespace, auth_context_uris(opening.auth), self.trust_domain)
        if refusal is not None:
            raise StreamRefused(refusal)

    def may_fetch(self, sha256: str, request: Request) -> bool:
        """The module port's check, per request."""
        if not self.mutual:
            return True
        namespace = certificate_namespace(request.peer_uris, self.trust_domain)
        return namespace is not None and may_fetch_module(
            sha256, namespace, self.config().plugins, self.statuses(), self.root_namespace
        )
