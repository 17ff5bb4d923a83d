"""Signed modules: a module whose key names signers is served only when, for every group of signers, a
signature by one of its keys verifies and names what was pulled (for OCI, the manifest digest the reference
resolved to; for http(s) and files, the bytes themselves). The keys come from the plugin's
`verificationKey` and from the server's policy (`--verification-key`, `--require-signatures`), which may
also accept a keyless signer (a Sigstore identity, `keyless.py`).

A module that fails is rejected like one that fails its sha256: its plugin's failStrategy stand-in serves,
and the reason says which check failed. A verified module is recorded in the cache index under a key that
includes its signers, so a restart serves it without checking again unless the keys or the policy changed.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from controlplane.model import Config, ModuleKey, RegistryCredential
from controlplane.modules import oci_signatures
from controlplane.modules.download import Fetched, FetchFailed, FetchSettings
from controlplane.modules.fetch import fetch_small, is_http, is_local
from controlplane.modules.keyless import Identity, KeylessRejected, is_keyless, verify_keyless
from controlplane.modules.signed_claims import SignedClaim, blob_claim, message_bundle_claims
from controlplane.modules.verify import ModuleRejected
from controlplane.redaction import redact
from controlplane.verification_keys import InvalidKey, canonical_pem, key_id, load_public_key, signature_valid

SIGNATURE_SUFFIX = ".sig"
"""Where `cosign sign-blob --output-signature` output is looked for, beside an http(s) or file module."""
BUNDLE_SUFFIX = ".sigstore.json"
"""Where a `cosign sign-blob --bundle` bundle is looked for when there is no `.sig`."""
MAX_SIGNATURE_FILE_BYTES = 64 * 1024


class SignatureRejected(ModuleRejected):
    """No signature by the required keys verifies for what was pulled; the message says which check failed."""


@dataclass(frozen=True)
class SignaturePolicy:
    """The server's demand for signed modules, beside each plugin's own `verificationKey`."""

    keys: tuple[str, ...] = ()
    """Canonical PEM public keys; a module must be signed by one of them (or by `identity`) where the
    policy applies."""
    everywhere: bool = False
    namespaces: frozenset[str] = frozenset()
    identity: Identity | None = None
    """A keyless signer accepted besides the keys."""

    @property
    def signers(self) -> tuple[str, ...]:
        return self.keys + ((self.identity.signer(),) if self.identity else ())

    def applies_to(self, namespace: str) -> bool:
        return bool(self.signers) and (self.everywhere or namespace in self.namespaces)

    def apply(self, config: Config) -> Config:
        """The config with the policy's signers required of every plugin it covers."""
        signers = self.signers  # one tuple shared by every plugin: a trusted root is kilobytes of text
        if not signers:
            return config
        plugins = tuple(
            replace(p, required_keys=signers) if self.applies_to(p.namespace) else p for p in config.plugins
        )
        return replace(config, plugins=plugins)


def load_key_files(paths: Sequence[str]) -> tuple[str, ...]:
    """The keys of `--verification-key` files; InvalidKey names the file that is wrong."""
    keys = []
    for path in paths:
        try:
            keys.append(canonical_pem(Path(path).read_text()))
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidKey(f"{path}: cannot read it ({exc})") from None
        except InvalidKey as exc:
            raise InvalidKey(f"{path}: {exc}") from None
    return tuple(dict.fromkeys(keys))


def check_signatures(
    key: ModuleKey, fetched: Fetched, settings: FetchSettings, credentials: tuple[RegistryCredential, ...] = ()
) -> None:
    """Blocking: from a worker thread. Returns when every group of `key.signers` has signed what was
    fetched; raises SignatureRejected otherwise."""
    if not key.signers:
        return
    if is_local(key.url) or is_http(key.url):
        served = fetched.as_served if fetched.as_served is not None else fetched.content
        pulled = ["sha256:" + hashlib.sha256(served).hexdigest()]
        claims = _detached(key.url, served, settings)
    else:
        # The manifest the reference resolved to first (an image index), then the one it led to.
        pulled = sorted(("sha256:" + d for d in fetched.digests), key=lambda d: d != fetched.manifest)
        try:
            claims = oci_signatures.find_claims(
                key.url, pulled, settings, credentials, lambda found: _satisfied(key.signers, found, pulled)
            )
        except FetchFailed as exc:
            raise SignatureRejected(f"signature check failed: cannot read the signatures: {exc}") from None
        if not claims:
            raise SignatureRejected(
                f"signature check failed: no cosign signature for {' or '.join(pulled)}: nothing under the tag "
                f"{oci_signatures.signature_tag(pulled[0])} nor among its referrers (referrers API or the tag "
                f"{oci_signatures.referrers_tag(pulled[0])})"
            )
    for group in key.signers:
        _require(group, claims, pulled)


def _detached(url: str, served: bytes, settings: FetchSettings) -> list[SignedClaim]:
    """`<url>.sig`, else the bundle `<url>.sigstore.json`."""
    failures = []
    for suffix in (SIGNATURE_SUFFIX, BUNDLE_SUFFIX):
        location = signature_url(url, suffix)
        try:
            found = fetch_small(location, settings, MAX_SIGNATURE_FILE_BYTES)
        except FetchFailed as exc:
            failures.append(f"{redact(location)} ({exc})")
            continue
        if suffix == SIGNATURE_SUFFIX:
            return [blob_claim(served, found, redact(location))]
        claims = message_bundle_claims(served, found, redact(location))
        if not claims:
            raise SignatureRejected(f"signature check failed: {redact(location)} is no Sigstore bundle of a blob")
        return claims
    raise SignatureRejected(f"signature check failed: no detached signature at {' nor '.join(failures)}")


def signature_url(url: str, suffix: str = SIGNATURE_SUFFIX) -> str:
    """`<url>.sig`: the path gets the suffix, a query or fragment stays where it is."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path + suffix))


def signer_names(key: ModuleKey) -> list[str]:
    """For status views: per group of signers, who may sign (`key sha256:...` or a keyless identity)."""
    return [
        " or ".join(str(Identity.from_signer(s)) if is_keyless(s) else f"key {key_id(s)}" for s in group)
        for group in key.signers
    ]


def _satisfied(groups: Iterable[Iterable[str]], claims: list[SignedClaim], pulled: list[str]) -> bool:
    try:
        for group in groups:
            _require(group, claims, pulled)
    except SignatureRejected:
        return False
    return True


def _require(group: Iterable[str], claims: list[SignedClaim], pulled: list[str]) -> None:
    signers = list(group)
    keys = [(key_id(pem), load_public_key(pem)) for pem in signers if not is_keyless(pem)]
    identities = [Identity.from_signer(s) for s in signers if is_keyless(s)]
    wanted = " or ".join([f"the key {name}" for name, _ in keys] + [str(i) for i in identities])
    by_key = [(name, c) for c in claims for name, k in keys if signature_valid(k, c.signature, c.message)]
    keyless_failures = []
    for identity in identities:
        for claim in claims:
            if claim.material is None or "publicKey" in claim.material:
                continue
            try:
                verify_keyless(identity, claim.material, claim.signature, claim.message, claim.payload)
            except KeylessRejected as exc:
                keyless_failures.append(f"{claim.found_at}: {exc}")
            else:
                by_key.append((str(identity), claim))
    if not by_key:
        places = sorted({c.found_at for c in claims})
        keyless = f"; keyless: {'; '.join(keyless_failures)}" if keyless_failures else ""
        raise SignatureRejected(
            f"signature check failed: none of the {len(claims)} signature(s) found ({'; '.join(places)}) "
            f"verifies with {wanted}{keyless}"
        )
    if not any(c.subjects.intersection(pulled) for _, c in by_key):
        name, claim = by_key[0]
        named = ", ".join(sorted(claim.subjects)) or "no image digest"
        raise SignatureRejected(
            f"signature check failed: the signature by {name} ({claim.found_at}) is for {named}, "
            f"not for the pulled {' or '.join(pulled)}"
        )
