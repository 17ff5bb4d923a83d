"""A Sigstore instance made in the tests, offline: a certificate authority in Fulcio's shape (root and
intermediate; leaf certificates for an OIDC identity, with the issuer in Fulcio's extension
1.3.6.1.4.1.57264.1.8 and the identity as a SAN), a transparency log key in Rekor's (signed entry timestamps
over the canonical JSON of body, integratedTime, logID and logIndex), the `trusted_root.json` that names
both (sigstore/protobuf-specs TrustedRoot), and keyless bundles as `cosign sign` writes them: the leaf
certificate and a `dsse` log entry in the verification material. The public good instance cannot be
reached from here (no internet), and its certificates cannot be made for a test identity anyway."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.cosign import BUNDLE, IN_TOTO, SIGN_PREDICATE, compact, in_toto_statement, pae

ISSUER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigstoreInstance:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    log_key: ec.EllipticCurvePrivateKey

    @staticmethod
    def create() -> SigstoreInstance:
        now = datetime.datetime.now(datetime.UTC)
        root_key, intermediate_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-sigstore")])
        intermediate_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-sigstore-intermediate")])

        def ca(
            subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey
        ) -> x509.Certificate:
            return (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(issuer)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(signer, hashes.SHA384())
            )

        root = ca(root_name, root_key, root_name, root_key)
        intermediate = ca(intermediate_name, intermediate_key, root_name, root_key)
        return SigstoreInstance(root_key, root, intermediate_key, intermediate, ec.generate_private_key(ec.SECP256R1()))

    @property
    def log_id(self) -> bytes:
        return hashlib.sha256(der(self.log_key.public_key())).digest()

    def trusted_root(self) -> str:
        return json.dumps(
            {
                "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
                "tlogs": [
                    {
                        "baseUrl": "https://rekor.test",
                        "hashAlgorithm": "SHA2_256",
                        "publicKey": {
                            "rawBytes": b64(der(self.log_key.public_key())),
                            "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                            "validFor": {"start": "2021-01-01T00:00:00Z"},
                        },
                        "logId": {"keyId": b64(self.log_id)},
                    }
                ],
                "certificateAuthorities": [
                    {
                        "subject": {"organization": "test", "commonName": "test-sigstore"},
                        "uri": "https://fulcio.test",
                        "certChain": {
                            "certificates": [
                                {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
                                for c in (self.intermediate, self.root)
                            ]
                        },
                        "validFor": {"start": "2021-01-01T00:00:00Z"},
                    }
                ],
                "ctlogs": [],
                "timestampAuthorities": [],
            }
        )

    def leaf(
        self, subject: str, issuer: str, code_signing: bool = True
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A Fulcio-style short-lived certificate for an OIDC identity."""
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_value = issuer.encode()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(minutes=10))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(subject)]), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CODE_SIGNING if code_signing else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.UnrecognizedExtension(ISSUER_OID, b"\x0c" + bytes([len(issuer_value)]) + issuer_value),
                critical=False,
            )
            .sign(self.intermediate_key, hashes.SHA384())
        )
        return key, cert

    def log_entry(self, body: bytes) -> tuple[int, int, bytes]:
        """Rekor's integration time, index and signed entry timestamp for an entry body."""
        integrated_time, log_index = int(datetime.datetime.now(datetime.UTC).timestamp()), 7
        promised = json.dumps(
            {"body": b64(body), "integratedTime": integrated_time, "logID": self.log_id.hex(), "logIndex": log_index},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        return integrated_time, log_index, self.log_key.sign(promised, ec.ECDSA(hashes.SHA256()))

    def hashedrekord_body(self, content: bytes, signature: bytes, cert: x509.Certificate) -> bytes:
        """The Rekor entry of a signature over `content` (a blob, or a classic simple-signing payload)."""
        return compact(
            {
                "apiVersion": "0.0.1",
                "kind": "hashedrekord",
                "spec": {
                    "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(content).hexdigest()}},
                    "signature": {
                        "content": b64(signature),
                        "publicKey": {"content": b64(cert.public_bytes(serialization.Encoding.PEM))},
                    },
                },
            }
        )

    def keyless_blob_bundle(self, content: bytes, subject: str, issuer: str) -> bytes:
        """What keyless `cosign sign-blob --bundle` writes: a message signature, the certificate, the entry."""
        key, cert = self.leaf(subject, issuer)
        signature = key.sign(content, ec.ECDSA(hashes.SHA256()))
        body = self.hashedrekord_body(content, signature, cert)
        message = {
            "messageDigest": {"algorithm": "SHA2_256", "digest": b64(hashlib.sha256(content).digest())},
            "signature": b64(signature),
        }
        return self.bundle(cert, "hashedrekord", body, {"messageSignature": message})

    def bundle(
        self, cert: x509.Certificate, kind: str, body: bytes, content: dict[str, Any], log_tampered: bool = False
    ) -> bytes:
        """A Sigstore bundle: the leaf certificate, the log entry of `body` (a Rekor `kind` entry) with its
        signed entry timestamp, and `content` (the message signature or the DSSE envelope)."""
        integrated_time, log_index, timestamp = self.log_entry(body)
        if log_tampered:
            log_index += 1
        entry = {
            "logIndex": str(log_index),
            "logId": {"keyId": b64(self.log_id)},
            "kindVersion": {"kind": kind, "version": "0.0.1"},
            "integratedTime": str(integrated_time),
            "inclusionPromise": {"signedEntryTimestamp": b64(timestamp)},
            "canonicalizedBody": b64(body),
        }
        return compact(
            {
                "mediaType": BUNDLE,
                "verificationMaterial": {
                    "certificate": {"rawBytes": b64(cert.public_bytes(serialization.Encoding.DER))},
                    "tlogEntries": [entry],
                },
                **content,
            }
        )

    def classic_annotations(self, cert: x509.Certificate) -> Callable[[bytes, bytes], dict[str, str]]:
        """The annotations keyless `cosign sign` (classic layout) puts beside a signature: the certificate
        and a Rekor bundle whose `hashedrekord` entry records the payload's hash, signature and certificate."""

        def annotate(payload: bytes, signature: bytes) -> dict[str, str]:
            pem = cert.public_bytes(serialization.Encoding.PEM)
            body = self.hashedrekord_body(payload, signature, cert)
            integrated_time, log_index, timestamp = self.log_entry(body)
            rekor = {
                "SignedEntryTimestamp": b64(timestamp),
                "Payload": {
                    "body": b64(body),
                    "integratedTime": integrated_time,
                    "logIndex": log_index,
                    "logID": self.log_id.hex(),
                },
            }
            return {"dev.sigstore.cosign/certificate": pem.decode(), "dev.sigstore.cosign/bundle": json.dumps(rekor)}

        return annotate

    def keyless_bundle(
        self, digest: str, subject: str, issuer: str, *, log_tampered: bool = False, code_signing: bool = True
    ) -> bytes:
        """What `cosign sign` (keyless, new bundle format) attaches: a DSSE-signed statement, the leaf
        certificate and the log entry with its signed entry timestamp."""
        key, cert = self.leaf(subject, issuer, code_signing)
        payload = in_toto_statement(digest, SIGN_PREDICATE)
        signature = key.sign(pae(IN_TOTO, payload), ec.ECDSA(hashes.SHA256()))
        envelope = {"payload": b64(payload), "payloadType": IN_TOTO, "signatures": [{"sig": b64(signature)}]}
        body = compact(
            {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "envelopeHash": {"algorithm": "sha256", "value": hashlib.sha256(compact(envelope)).hexdigest()},
                    "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
                    "signatures": [
                        {"signature": b64(signature), "verifier": b64(cert.public_bytes(serialization.Encoding.PEM))}
                    ],
                },
            }
        )
        return self.bundle(cert, "dsse", body, {"dsseEnvelope": envelope}, log_tampered)
