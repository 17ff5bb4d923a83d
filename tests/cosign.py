"""Writes signatures as cosign writes them, with keys made in the tests, so that the control plane is tested
against cosign's formats without cosign (not installable here: no Go toolchain, no internet). Each format
follows cosign's own source (sigstore/cosign):

- `sign_classic`: `cosign sign --key` (cmd/cosign/cli/sign/sign.go `signDigest`, pkg/oci/static,
  pkg/oci/remote `WriteSignatures`): a simple-signing payload (sigstore/sigstore pkg/signature/payload,
  compact JSON, `optional: null` without annotations) pushed as a layer of an OCI image tagged
  `sha256-<hex>.sig`, its base64 signature in the `dev.cosignproject.cosign/signature` annotation.
- `sign_bundle`: `cosign sign --key --new-bundle-format` (cosign 3's default; `signDigestBundle`,
  pkg/oci/remote `WriteReferrer`): an in-toto statement with the `https://sigstore.dev/cosign/sign/v1`
  predicate in a DSSE envelope inside a Sigstore bundle v0.3, pushed as a referrer manifest (empty config,
  `subject`, `artifactType`) by digest; on a registry without the referrers API the pushing client (go-
  containerregistry) lists it in the image index under the referrers tag `sha256-<hex>`, as done here.
- `sign_blob`: `cosign sign-blob --key --output-signature`: base64 of the signature over the file;
  `blob_bundle`: cosign 3's `sign-blob --key --bundle`, a bundle with a `messageSignature`.

Signature schemes as sigstore/sigstore's signers for cosign keys: ECDSA P-256 and RSA PKCS#1 v1.5 over
SHA-256, Ed25519 over the message itself."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from tests.registry import OCI_INDEX, OCI_MANIFEST, Registry, sha256_digest

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private: PrivateKey

    @staticmethod
    def create(kind: str = "ecdsa") -> KeyPair:
        """`cosign generate-key-pair` makes ECDSA P-256 keys; RSA and Ed25519 keys come from KMSs and
        `cosign import-key-pair`."""
        if kind == "ecdsa":
            return KeyPair(ec.generate_private_key(ec.SECP256R1()))
        if kind == "rsa":
            return KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        if kind == "ed25519":
            return KeyPair(ed25519.Ed25519PrivateKey.generate())
        raise ValueError(kind)

    @property
    def public_pem(self) -> str:
        """As `cosign.pub` holds it."""
        return (
            self.private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            return self.private.sign(message, ec.ECDSA(hashes.SHA256()))
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return self.private.sign(message)

    def hint(self) -> str:
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(der).digest()).decode()


def compact(value: Any) -> bytes:
    """Go's json.Marshal: no spaces, keys in the order given (struct field order)."""
    return json.dumps(value, separators=(",", ":")).encode()


def simple_signing_payload(repository_name: str, digest: str) -> bytes:
    return compact(
        {
            "critical": {
                "identity": {"docker-reference": repository_name},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    )


def sign_classic(
    registry: Registry,
    repository: str,
    digest: str,
    key: KeyPair,
    *,
    payload_digest: str = "",
    corrupt: bool = False,
    keyless: Callable[[bytes, bytes], dict[str, str]] | None = None,
) -> str:
    """Signs the manifest `digest` as `cosign sign --key` does; `payload_digest` makes the payload name
    another manifest (a signature copied from another image); `corrupt` flips a bit of the signature;
    `keyless` gives the certificate and Rekor bundle annotations of a keyless signature (from the payload and
    the signature), as keyless `cosign sign` adds them. Returns the signature tag."""
    payload = simple_signing_payload(f"{registry.host}/{repository}", payload_digest or digest)
    signature = key.sign(payload)
    if corrupt:
        signature = signature[:-1] + bytes([signature[-1] ^ 1])
    annotations = {"dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()}
    if keyless is not None:
        annotations |= keyless(payload, signature)
    layer = {"mediaType": SIMPLE_SIGNING, **registry.push_blob(repository, payload), "annotations": annotations}
    config = compact(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(payload)]},
            "config": {},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **registry.push_blob(repository, config)},
        "layers": [layer],
    }
    tag = digest.replace(":", "-") + ".sig"
    registry.push_manifest(repository, tag, manifest)
    return tag


def in_toto_statement(digest: str, predicate_type: str = SIGN_PREDICATE) -> bytes:
    algorithm, hex_digest = digest.split(":", 1)
    return compact(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"digest": {algorithm: hex_digest}, "annotations": {}}],
            "predicateType": predicate_type,
            "predicate": {},
        }
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def bundle(digest: str, key: KeyPair, corrupt: bool = False, predicate_type: str = SIGN_PREDICATE) -> bytes:
    """A Sigstore bundle v0.3 as protojson writes it for a key-based DSSE signature without a tlog entry."""
    payload = in_toto_statement(digest, predicate_type)
    signature = key.sign(pae(IN_TOTO, payload))
    if corrupt:
        signature = signature[:-1] + bytes([signature[-1] ^ 1])
    return compact(
        {
            "mediaType": BUNDLE,
            "verificationMaterial": {"publicKey": {"hint": key.hint()}},
            "dsseEnvelope": {
                "payload": base64.b64encode(payload).decode(),
                "payloadType": IN_TOTO,
                "signatures": [{"sig": base64.b64encode(signature).decode()}],
            },
        }
    )


def sign_bundle(
    registry: Registry,
    repository: str,
    digest: str,
    key: KeyPair,
    *,
    statement_digest: str = "",
    corrupt: bool = False,
    predicate_type: str = SIGN_PREDICATE,
) -> str:
    """Attaches a bundle as cosign's `WriteReferrer` does, and lists it under the referrers tag as
    go-containerregistry does on a registry without the referrers API. Returns the referrer's digest."""
    content = bundle(statement_digest or digest, key, corrupt, predicate_type)
    return push_bundle(registry, repository, digest, content, predicate_type)


def push_bundle(
    registry: Registry, repository: str, digest: str, content: bytes, predicate_type: str = SIGN_PREDICATE
) -> str:
    """Pushes a bundle as a referrer of `digest` and lists it under the referrers tag; returns its digest."""
    layer = registry.push_blob(repository, content)
    config = registry.push_blob(repository, b"{}")
    subject = registry.descriptor(repository, digest)
    annotations = {
        "dev.sigstore.bundle.content": "dsse-envelope",
        "dev.sigstore.bundle.predicateType": predicate_type,
        "org.opencontainers.image.created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_CONFIG, **config, "artifactType": BUNDLE},
        "layers": [
            {
                "mediaType": BUNDLE,
                **layer,
                "annotations": {"org.opencontainers.image.title": layer["digest"].replace(":", "-") + ".sigstore.json"},
            }
        ],
        "annotations": annotations,
        "subject": subject,
        "artifactType": BUNDLE,
    }
    referrer = registry.push_manifest_by_digest(repository, manifest)
    tag = digest.replace(":", "-")
    existing = registry.manifest_or_none(repository, tag)
    index = existing or {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "size": len(json.dumps(manifest, indent=1).encode()),
            "digest": referrer,
            "artifactType": BUNDLE,
            "annotations": annotations,
        }
    )
    registry.push_manifest(repository, tag, index)
    return referrer


def sign_blob(content: bytes, key: KeyPair) -> bytes:
    """What `cosign sign-blob --key cosign.key --output-signature FILE` writes to FILE."""
    return base64.b64encode(key.sign(content))


def blob_bundle(content: bytes, key: KeyPair) -> bytes:
    """What `cosign sign-blob --key cosign.key --bundle FILE` (cosign 3) writes to FILE without a log entry:
    a bundle whose `messageSignature` holds the file's digest and the signature over the file."""
    return compact(
        {
            "mediaType": BUNDLE,
            "verificationMaterial": {"publicKey": {"hint": key.hint()}},
            "messageSignature": {
                "messageDigest": {
                    "algorithm": "SHA2_256",
                    "digest": base64.b64encode(hashlib.sha256(content).digest()).decode(),
                },
                "signature": base64.b64encode(key.sign(content)).decode(),
            },
        }
    )
