"""Finds the cosign signatures of a manifest in its repository, in both layouts cosign writes. Blocking: run
it in a worker thread.

- Classic: the tag `sha256-<hex>.sig` names an image whose layers are simple-signing payloads, each with its
  signature in the `dev.cosignproject.cosign/signature` annotation.
- OCI 1.1: Sigstore bundles pushed as referrers of the manifest (`subject` set), listed by the referrers
  API (`/v2/<name>/referrers/<digest>`) or, on registries without it (distribution 2.x, Docker Hub), by the
  image index under the referrers tag `sha256-<hex>`, which the pushing client keeps up to date."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from controlplane.model import RegistryCredential
from controlplane.modules.download import FetchSettings
from controlplane.modules.image import Descriptor
from controlplane.modules.oci import NotFound, Repository, open_repository
from controlplane.modules.signed_claims import (
    BUNDLE_MEDIA_TYPES,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_LAYER,
    SignedClaim,
    bundle_claims,
    simple_signing_claim,
)

MAX_SIGNATURE_BLOB_BYTES = 1024 * 1024
"""A payload or bundle; real ones are a few kilobytes (a bundle with a certificate chain, tens)."""
MAX_SIGNATURES = 32
"""Signature layers or referrers looked at per manifest: enough for every real signer, and a bound on the
requests an attacker who can push to the repository could make the control plane send."""


def signature_tag(digest: str) -> str:
    """`sha256:<hex>` → `sha256-<hex>.sig`, where cosign's classic layout keeps a manifest's signatures."""
    return digest.replace(":", "-") + ".sig"


def referrers_tag(digest: str) -> str:
    """`sha256:<hex>` → `sha256-<hex>`, the OCI 1.1 referrers tag schema."""
    return digest.replace(":", "-")


def find_claims(
    url: str,
    digests: Iterable[str],
    settings: FetchSettings,
    credentials: tuple[RegistryCredential, ...] = (),
    enough: Callable[[list[SignedClaim]], bool] = lambda claims: False,
) -> list[SignedClaim]:
    """The cosign signatures attached to any of `digests` (`sha256:<hex>`, the manifests a pull went
    through) in the repository of `url`: the classic layout's first, and the referrers only when `enough`
    says those do not suffice, which saves a registry that has no referrers two requests per pull."""
    registry = open_repository(url, settings, credentials)
    digests = list(digests)
    claims = [claim for digest in digests for claim in _classic(registry, digest)]
    if claims and enough(claims):
        return claims
    return claims + [claim for digest in digests for claim in _bundles(registry, digest)]


def _classic(registry: Repository, digest: str) -> list[SignedClaim]:
    tag = signature_tag(digest)
    try:
        manifest, _, _ = registry.manifest(tag)
    except NotFound:
        return []
    claims = []
    for layer in _entries(manifest, "layers")[:MAX_SIGNATURES]:
        annotations, descriptor = layer.get("annotations"), _descriptor(layer)
        if (
            layer.get("mediaType") != SIMPLE_SIGNING_LAYER
            or descriptor is None
            or not isinstance(annotations, dict)
            or not isinstance(annotations.get(SIGNATURE_ANNOTATION), str)
        ):
            continue
        payload = registry.blob(descriptor, MAX_SIGNATURE_BLOB_BYTES)
        claims.append(simple_signing_claim(payload, annotations, f"tag {tag}"))
    return claims


def _bundles(registry: Repository, digest: str) -> list[SignedClaim]:
    index = registry.referrers(digest)
    where = f"referrers of {digest}"
    if index is None:
        where = f"tag {referrers_tag(digest)}"
        try:
            index, _, _ = registry.manifest(referrers_tag(digest))
        except NotFound:
            return []
    claims = []
    for entry in _entries(index, "manifests")[:MAX_SIGNATURES]:
        descriptor = _descriptor(entry)
        if descriptor is None or entry.get("artifactType") not in BUNDLE_MEDIA_TYPES:
            continue
        manifest, _, _ = registry.manifest(descriptor.digest)
        subject = manifest.get("subject")
        if not isinstance(subject, dict) or subject.get("digest") != digest:
            continue  # a referrers tag is written by clients, and may list what refers to something else
        for layer in _entries(manifest, "layers")[:MAX_SIGNATURES]:
            bundle = _descriptor(layer)
            if bundle is not None and layer.get("mediaType") in BUNDLE_MEDIA_TYPES:
                blob = registry.blob(bundle, MAX_SIGNATURE_BLOB_BYTES)
                claims += bundle_claims(blob, f"{where}: {descriptor.digest}")
    return claims


def _entries(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = document.get(key)
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def _descriptor(entry: dict[str, Any]) -> Descriptor | None:
    digest, size = entry.get("digest"), entry.get("size")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        return None
    if not isinstance(size, int) or size < 0 or size > MAX_SIGNATURE_BLOB_BYTES:
        return None
    return Descriptor(str(entry.get("mediaType", "")), digest, size)
