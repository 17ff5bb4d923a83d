"""Keyless (Sigstore) signatures, checked offline against a trusted root file: the signing certificate must
chain to a certificate authority of the root (Fulcio), name the required identity (OIDC issuer and subject),
and have been valid when the transparency log (Rekor) integrated the entry, as the log's signed entry
timestamp (SET), made with a log key of the root, vouches; the log entry must be for this very signature;
and the certificate's key must have made the signature. Pure functions over the bundle's JSON.

Not checked (said in the README): the certificate transparency SCTs embedded in the certificate, and Merkle
inclusion proofs against a log checkpoint; the SET is the log's promise that the entry is included."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from controlplane.modules.signed_claims import decode_base64
from controlplane.verification_keys import PublicKey, signature_valid

KEYLESS_PREFIX = "keyless:"
"""Marks a signer that is an identity rather than a PEM key, in a module key's signer groups."""
OIDC_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OIDC_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")


class KeylessRejected(Exception):
    """The message says which check failed."""


class InvalidTrustRoot(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    issuer: str
    subject: str
    trust_root: str
    """The trusted root JSON text (Sigstore's `trusted_root.json`)."""

    def signer(self) -> str:
        """This identity as a signer in a module key: its text changes when the root does, so a new root
        checks cached modules again."""
        return KEYLESS_PREFIX + json.dumps([self.issuer, self.subject, self.trust_root])

    @staticmethod
    def from_signer(signer: str) -> Identity:
        issuer, subject, trust_root = json.loads(signer[len(KEYLESS_PREFIX) :])
        return Identity(issuer, subject, trust_root)

    def __str__(self) -> str:
        return f"keyless identity {self.subject} (issuer {self.issuer})"


def is_keyless(signer: str) -> bool:
    return signer.startswith(KEYLESS_PREFIX)


def check_trust_root(text: str) -> None:
    """InvalidTrustRoot when `text` is not a trusted root with at least one CA and one log key."""
    root = _json(text)
    if root is None or not _authorities(root) or not _log_keys(root):
        raise InvalidTrustRoot("not a Sigstore trusted root: no certificateAuthorities or no tlogs with a key")


def verify_keyless(
    identity: Identity, material: Mapping[str, Any], signature: bytes, message: bytes, payload: bytes
) -> None:
    """Returns when the bundle's `verificationMaterial` proves a keyless signature by `identity` of
    `message` (a DSSE PAE over `payload`, or `payload` itself for a classic signature); KeylessRejected
    otherwise."""
    root = _json(identity.trust_root)
    if root is None:
        raise KeylessRejected("the trusted root is not JSON")
    leaf = _leaf_certificate(material)
    entries = material.get("tlogEntries")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise KeylessRejected("no transparency log entry in the bundle")
    integrated = _verify_entry(root, entries[0], leaf, signature, payload)
    _verify_chain(root, leaf, integrated)
    issuer, subjects = _identity_of(leaf)
    if issuer != identity.issuer or identity.subject not in subjects:
        raise KeylessRejected(
            f"certificate identity {', '.join(subjects) or 'none'} (issuer {issuer or 'none'}) is not the "
            f"required {identity.subject} (issuer {identity.issuer})"
        )
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not signature_valid(key, signature, message):
        raise KeylessRejected("the signature does not verify with the certificate's key")


def _leaf_certificate(material: Mapping[str, Any]) -> x509.Certificate:
    certificate = material.get("certificate")
    if not isinstance(certificate, dict):
        chain = material.get("x509CertificateChain")
        certificates = chain.get("certificates") if isinstance(chain, dict) else None
        certificate = certificates[0] if isinstance(certificates, list) and certificates else None
    raw = decode_base64(certificate.get("rawBytes")) if isinstance(certificate, dict) else None
    if raw is None:
        raise KeylessRejected("no signing certificate in the bundle")
    try:
        return x509.load_der_x509_certificate(raw)
    except ValueError:
        raise KeylessRejected("the signing certificate is not readable") from None


def _verify_entry(
    root: Mapping[str, Any], entry: Mapping[str, Any], leaf: x509.Certificate, signature: bytes, payload: bytes
) -> datetime.datetime:
    """The integration time of a log entry whose SET verifies with a log key of the root and whose body
    records this signature by this certificate."""
    log_id = entry.get("logId")
    key_id = decode_base64(log_id.get("keyId")) if isinstance(log_id, dict) else None
    log = _log_keys(root).get(key_id or b"")
    if log is None:
        raise KeylessRejected("the transparency log entry is from a log the trusted root does not list")
    log_key, (valid_from, valid_until) = log
    promise = entry.get("inclusionPromise")
    timestamp = decode_base64(promise.get("signedEntryTimestamp")) if isinstance(promise, dict) else None
    body_text = entry.get("canonicalizedBody")
    try:
        integrated_time, log_index = int(entry.get("integratedTime", "")), int(entry.get("logIndex", ""))
    except (TypeError, ValueError):
        raise KeylessRejected("the transparency log entry has no integration time or index") from None
    if timestamp is None or not isinstance(body_text, str) or key_id is None:
        raise KeylessRejected("the transparency log entry has no signed entry timestamp")
    promised = json.dumps(
        {"body": body_text, "integratedTime": integrated_time, "logID": key_id.hex(), "logIndex": log_index},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    if not signature_valid(log_key, timestamp, promised):
        raise KeylessRejected("the transparency log's signed entry timestamp does not verify")
    try:
        integrated = datetime.datetime.fromtimestamp(integrated_time, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        raise KeylessRejected("the transparency log entry's integration time is out of range") from None
    if not valid_from <= integrated <= valid_until:
        raise KeylessRejected("the transparency log's key was not valid when it integrated the entry")
    body = _json((decode_base64(body_text) or b"").decode("utf-8", "replace"))
    if body is None or not _records(body, leaf, signature, payload):
        raise KeylessRejected("the transparency log entry is for another signature")
    return integrated


def _records(body: Mapping[str, Any], leaf: x509.Certificate, signature: bytes, payload: bytes) -> bool:
    """Whether a Rekor entry body records `signature` over `payload` by `leaf`: a `dsse` entry (a bundle's
    DSSE envelope) or a `hashedrekord` one (a classic signature of a simple-signing payload)."""
    spec = body.get("spec")
    if not isinstance(spec, dict):
        return False
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM).strip()
    payload_hash = hashlib.sha256(payload).hexdigest()
    if body.get("kind") == "hashedrekord":
        data, recorded = spec.get("data"), spec.get("signature")
        hashed = data.get("hash") if isinstance(data, dict) else None
        key = recorded.get("publicKey") if isinstance(recorded, dict) else None
        return (
            isinstance(hashed, dict)
            and hashed.get("value") == payload_hash
            and isinstance(recorded, dict)
            and decode_base64(recorded.get("content")) == signature
            and isinstance(key, dict)
            and (decode_base64(key.get("content")) or b"").strip() == leaf_pem
        )
    recorded_hash = spec.get("payloadHash")
    if body.get("kind") != "dsse" or not isinstance(recorded_hash, dict) or recorded_hash.get("value") != payload_hash:
        return False
    for entry in spec.get("signatures") or []:
        if not isinstance(entry, dict):
            continue
        verifier = decode_base64(entry.get("verifier"))
        if decode_base64(entry.get("signature")) == signature and verifier is not None and verifier.strip() == leaf_pem:
            return True
    return False


def _verify_chain(root: Mapping[str, Any], leaf: x509.Certificate, at: datetime.datetime) -> None:
    if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
        raise KeylessRejected("the signing certificate was not valid when the log integrated the signature")
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.CODE_SIGNING not in usages:
        raise KeylessRejected("the signing certificate is not for code signing")
    for chain, start, end in _authorities(root):
        if not start <= at <= end:
            continue
        try:
            leaf.verify_directly_issued_by(chain[0])
            for child, parent in zip(chain, chain[1:], strict=False):
                child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return
    raise KeylessRejected("the signing certificate was not issued by a certificate authority of the trusted root")


def _identity_of(leaf: x509.Certificate) -> tuple[str, list[str]]:
    issuer = ""
    for oid in (OIDC_ISSUER_V2, OIDC_ISSUER_V1):
        try:
            value = leaf.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        issuer = _der_utf8(raw) if oid == OIDC_ISSUER_V2 else raw.decode("utf-8", "replace")
        break
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return issuer, []
    subjects = [str(n) for n in names.get_values_for_type(x509.UniformResourceIdentifier)]
    subjects += [str(n) for n in names.get_values_for_type(x509.RFC822Name)]
    return issuer, subjects


def _der_utf8(raw: bytes) -> str:
    """The text of a DER UTF8String (tag 12), in the short or long length form."""
    if len(raw) < 2 or raw[0] != 0x0C:
        return ""
    start = 2 + (raw[1] & 0x7F if raw[1] & 0x80 else 0)
    return raw[start:].decode("utf-8", "replace")


def _authorities(root: Mapping[str, Any]) -> list[tuple[list[x509.Certificate], datetime.datetime, datetime.datetime]]:
    found = []
    for authority in root.get("certificateAuthorities") or []:
        if not isinstance(authority, dict):
            continue
        chain_data = authority.get("certChain")
        raws = chain_data.get("certificates") if isinstance(chain_data, dict) else None
        try:
            chain = [x509.load_der_x509_certificate(decode_base64(c.get("rawBytes")) or b"") for c in raws or []]
        except (ValueError, AttributeError):
            continue
        if chain:
            start, end = _window(authority.get("validFor"))
            found.append((chain, start, end))
    return found


def _log_keys(
    root: Mapping[str, Any],
) -> dict[bytes, tuple[PublicKey, tuple[datetime.datetime, datetime.datetime]]]:
    """Per log id, the log's key and when it was valid."""
    keys: dict[bytes, tuple[PublicKey, tuple[datetime.datetime, datetime.datetime]]] = {}
    for log in root.get("tlogs") or []:
        log_id = log.get("logId") if isinstance(log, dict) else None
        public_key = log.get("publicKey") if isinstance(log, dict) else None
        key_id = decode_base64(log_id.get("keyId")) if isinstance(log_id, dict) else None
        raw = decode_base64(public_key.get("rawBytes")) if isinstance(public_key, dict) else None
        if key_id is None or raw is None:
            continue
        try:
            key = serialization.load_der_public_key(raw)
        except ValueError:
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            keys[key_id] = key, _window(public_key.get("validFor") if isinstance(public_key, dict) else None)
    return keys


def _window(valid_for: Any) -> tuple[datetime.datetime, datetime.datetime]:
    start = _time(valid_for.get("start")) if isinstance(valid_for, dict) else None
    end = _time(valid_for.get("end")) if isinstance(valid_for, dict) else None
    return start or datetime.datetime.min.replace(tzinfo=datetime.UTC), end or datetime.datetime.max.replace(
        tzinfo=datetime.UTC
    )


def _time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
