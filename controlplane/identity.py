"""Who a proxy is, by its certificate: with mTLS, the namespace a proxy may ask as is the one its SPIFFE id
names (`spiffe://<trust-domain>/ns/<namespace>/sa/<account>`, as Istio's workload certificates carry it),
never only what its node metadata claims. Pure: the transports hand over the certificate's URI SANs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from controlplane.model import ModuleKey, ModuleReady, ModuleStatus, WasmPlugin

_SPIFFE = re.compile(r"^spiffe://(?P<domain>[^/]+)/ns/(?P<namespace>[^/]+)/sa/(?P<account>[^/]+)$")


def certificate_namespace(uris: Sequence[str], trust_domain: str) -> str | None:
    """The namespace of the one SPIFFE id in `uris` that belongs to `trust_domain`; None when there is no
    such id, or more than one (a SPIFFE certificate carries exactly one)."""
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if len(spiffe) != 1:
        return None
    match = _SPIFFE.match(spiffe[0])
    if match is None or match["domain"] != trust_domain:
        return None
    return match["namespace"]


def namespace_refusal(claimed: str, uris: Sequence[str], trust_domain: str) -> str | None:
    """Why a proxy claiming namespace `claimed` is refused, or None when its certificate names it."""
    namespace = certificate_namespace(uris, trust_domain)
    if namespace is None:
        shown = ", ".join(uris) or "none"
        return f"the client certificate has no SPIFFE id of trust domain {trust_domain!r} (URI SANs: {shown})"
    if namespace != claimed:
        return f"the client certificate is for namespace {namespace!r}, not {claimed!r}"
    return None


def auth_context_uris(auth_context: Mapping[str, Iterable[bytes]]) -> tuple[str, ...]:
    """The URI SANs of the peer certificate, from a gRPC `context.auth_context()`."""
    return tuple(value.decode(errors="replace") for value in auth_context.get("peer_uri", ()))


def may_fetch_module(
    sha256: str,
    namespace: str,
    plugins: Iterable[WasmPlugin],
    modules: Mapping[ModuleKey, ModuleStatus],
    root_namespace: str,
) -> bool:
    """Whether a proxy of `namespace` is sent a plugin whose module is `sha256`: a plugin of its own
    namespace, or of the root namespace, which applies in every one."""
    for plugin in plugins:
        if plugin.namespace not in (namespace, root_namespace):
            continue
        status = modules.get(plugin.module)
        if isinstance(status, ModuleReady) and status.sha256 == sha256:
            return True
    return False
