"""What a signature says it signed, read from the formats cosign writes. Pure functions over bytes and JSON:
finding them in a registry is `oci_signatures.py`'s job, judging them with keys `signatures.py`'s.

- Simple signing (`cosign sign`, the classic layout): the payload layer's bytes are signed as they are, and
  name the image in `critical.image.docker-manifest-digest`.
- Sigstore bundle v0.3 (`cosign sign --new-bundle-format`, cosign 3's default): a DSSE envelope whose
  payload is an in-toto statement with the `https://sigstore.dev/cosign/sign/v1` predicate, naming the
  image in `subject[].digest.sha256`; the signature covers DSSE's pre-authentication encoding (PAE) of the
  payload, not the payload alone.
- A detached blob signature (`cosign sign-blob`): base64 of the signature over the file's bytes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

SIMPLE_SIGNING_LAYER = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
REKOR_BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"
BUNDLE_MEDIA_TYPES = frozenset(
    {"application/vnd.dev.sigstore.bundle.v0.3+json", "application/vnd.dev.sigstore.bundle+json;version=0.3"}
)
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPES = frozenset({"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"})
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"


@dataclass(frozen=True)
class SignedClaim:
    """One signature and what it covers."""

    message: bytes
    """The exact bytes the signature is over."""
    signature: bytes
    subjects: frozenset[str]
    """The digests (`sha256:<hex>`) the signed message names; empty when it names none in a known form."""
    found_at: str
    """Where it was found, for messages."""
    material: Mapping[str, Any] | None = field(default=None, repr=False)
    """A bundle's `verificationMaterial` (certificate, log entries), for keyless signatures; for a classic
    keyless signature, its certificate and Rekor bundle annotations in that same shape."""
    payload: bytes = field(default=b"", repr=False)
    """What a transparency log entry records by its hash: a DSSE envelope's payload, or the simple-signing
    payload itself."""


def simple_signing_claim(payload: bytes, annotations: Mapping[str, Any], found_at: str) -> SignedClaim:
    """A classic cosign signature: a simple-signing payload and its layer's annotations (a corrupted
    signature is kept, as one that verifies with no key, so that the failure says one was found)."""
    signature = decode_base64(annotations.get(SIGNATURE_ANNOTATION)) or b""
    subjects: frozenset[str] = frozenset()
    document = _json_object(payload)
    critical = document.get("critical") if document else None
    if isinstance(critical, dict) and critical.get("type") == COSIGN_SIGNATURE_TYPE:
        image = critical.get("image")
        digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
        if isinstance(digest, str):
            subjects = frozenset({digest})
    return SignedClaim(payload, signature, subjects, found_at, _classic_material(annotations), payload)


def _classic_material(annotations: Mapping[str, Any]) -> dict[str, Any] | None:
    """A keyless classic signature's certificate (PEM) and Rekor bundle (`SignedEntryTimestamp` and the
    entry's `body`, `integratedTime`, `logIndex`, hex `logID`) as a bundle's verificationMaterial."""
    certificate, rekor = annotations.get(CERTIFICATE_ANNOTATION), annotations.get(REKOR_BUNDLE_ANNOTATION)
    if not isinstance(certificate, str) or not isinstance(rekor, str):
        return None
    try:
        der = x509.load_pem_x509_certificate(certificate.encode()).public_bytes(serialization.Encoding.DER)
    except ValueError:
        return None
    document = _json_object(rekor.encode())
    entry = document.get("Payload") if document else None
    if not isinstance(entry, dict) or not isinstance(entry.get("logID"), str):
        return None
    try:
        log_id = bytes.fromhex(entry["logID"])
    except ValueError:
        return None
    return {
        "certificate": {"rawBytes": base64.b64encode(der).decode()},
        "tlogEntries": [
            {
                "logIndex": str(entry.get("logIndex")),
                "logId": {"keyId": base64.b64encode(log_id).decode()},
                "integratedTime": str(entry.get("integratedTime")),
                "inclusionPromise": {
                    "signedEntryTimestamp": document.get("SignedEntryTimestamp") if document else None
                },
                "canonicalizedBody": entry.get("body"),
            }
        ],
    }


def bundle_claims(bundle: bytes, found_at: str) -> list[SignedClaim]:
    """The signatures of a Sigstore bundle's DSSE envelope, each over the envelope's PAE. Statements that
    are not cosign image signatures (an SBOM or provenance attestation signed with the same key) name no
    subject here: an attestation is not a signature of the image."""
    document = _json_object(bundle)
    envelope = document.get("dsseEnvelope") if document else None
    if not isinstance(envelope, dict):
        return []
    payload_type, payload = envelope.get("payloadType"), decode_base64(envelope.get("payload"))
    signatures = envelope.get("signatures")
    if not isinstance(payload_type, str) or payload is None or not isinstance(signatures, list):
        return []
    subjects = _statement_subjects(payload) if payload_type == IN_TOTO_PAYLOAD_TYPE else frozenset()
    message = pre_authentication_encoding(payload_type, payload)
    material = document.get("verificationMaterial") if document else None
    material = material if isinstance(material, dict) else None
    claims = []
    for entry in signatures:
        signature = decode_base64(entry.get("sig")) if isinstance(entry, dict) else None
        claims.append(SignedClaim(message, signature or b"", subjects, found_at, material, payload))
    return claims


def blob_claim(content: bytes, signature_file: bytes, found_at: str) -> SignedClaim:
    """A `cosign sign-blob` signature file (base64, maybe with a line break) for `content`."""
    signature = decode_base64(signature_file.decode("ascii", "replace").strip()) or b""
    return SignedClaim(content, signature, frozenset({"sha256:" + hashlib.sha256(content).hexdigest()}), found_at)


def message_bundle_claims(content: bytes, bundle: bytes, found_at: str) -> list[SignedClaim]:
    """A Sigstore bundle with a `messageSignature` (cosign 3's `sign-blob --bundle`): a signature over the
    file itself, and the digest of the file it was made for."""
    document = _json_object(bundle)
    signed = document.get("messageSignature") if document else None
    if not isinstance(signed, dict):
        return []
    digest = signed.get("messageDigest")
    subjects: frozenset[str] = frozenset()
    if isinstance(digest, dict) and digest.get("algorithm") == "SHA2_256":
        named = decode_base64(digest.get("digest"))
        subjects = frozenset({"sha256:" + named.hex()}) if named else frozenset()
    material = document.get("verificationMaterial") if document else None
    material = material if isinstance(material, dict) else None
    signature = decode_base64(signed.get("signature")) or b""
    return [SignedClaim(content, signature, subjects, found_at, material, content)]


def pre_authentication_encoding(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1's PAE: what a DSSE signature covers, so that a payload cannot be replayed as another type."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def decode_base64(value: Any) -> bytes | None:
    """Standard or URL-safe base64 (protobuf JSON accepts both), padded or not; None when it is neither."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _statement_subjects(payload: bytes) -> frozenset[str]:
    statement = _json_object(payload)
    if (
        not statement
        or statement.get("_type") not in IN_TOTO_STATEMENT_TYPES
        or statement.get("predicateType") != COSIGN_SIGN_PREDICATE
    ):
        return frozenset()
    subjects = statement.get("subject")
    digests = set()
    for subject in subjects if isinstance(subjects, list) else []:
        digest = subject.get("digest") if isinstance(subject, dict) else None
        value = digest.get("sha256") if isinstance(digest, dict) else None
        if isinstance(value, str):
            digests.add("sha256:" + value)
    return frozenset(digests)


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
