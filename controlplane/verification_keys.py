"""Public keys that module signatures are checked with: PEM `PUBLIC KEY` blocks (what `cosign generate-key-pair`
writes to `cosign.pub`) for ECDSA P-256, RSA and Ed25519, and the signature schemes cosign uses with them:
ECDSA and RSA PKCS#1 v1.5 over SHA-256, Ed25519 over the message itself. Pure functions: the config loader
uses them to check a `verificationKey`, the module fetcher to check signatures."""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
MIN_RSA_BITS = 2048


class InvalidKey(Exception):
    """Not a public key signatures can be checked with; the message says why."""


def load_public_key(pem: str) -> PublicKey:
    """The key of a PEM `PUBLIC KEY` block, or InvalidKey."""
    text = pem.strip()
    if "PRIVATE KEY" in text:
        # Refused before parsing: a private key pasted into a plugin is a leak to report, not to use.
        raise InvalidKey("is a private key; give the public key (cosign.pub), and keep the private one secret")
    if not text.startswith("-----BEGIN PUBLIC KEY-----"):
        raise InvalidKey("expected a PEM public key (-----BEGIN PUBLIC KEY-----), as cosign.pub holds")
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        first_sentence = str(exc).split(". ", 1)[0].rstrip(".")  # the rest is ASN.1 detail
        raise InvalidKey(f"not a readable PEM public key ({first_sentence})") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidKey(f"ECDSA key on {key.curve.name}; only P-256 (secp256r1) is accepted")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidKey(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise InvalidKey(f"{type(key).__name__} keys are not accepted; use ECDSA P-256, RSA or Ed25519")


def canonical_pem(pem: str) -> str:
    """The key re-encoded, so that the same key written with other line breaks is the same key."""
    der = _der(load_public_key(pem))
    return (
        serialization.load_der_public_key(der)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def key_id(pem: str) -> str:
    """A short name for a key in messages: the start of the sha256 of its DER encoding."""
    return "sha256:" + hashlib.sha256(_der(load_public_key(pem))).hexdigest()[:16]


def signature_valid(key: PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is `key`'s over `message`, in the scheme cosign uses for that key type."""
    if not signature:
        return False
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
