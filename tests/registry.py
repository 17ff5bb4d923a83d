"""A real OCI registry for the tests (Debian's `docker-registry`, distribution 2.8) on loopback, with or
without TLS and basic auth, and a small client that pushes modules in every image format over the
distribution API: blobs uploaded, then the manifest PUT."""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import http.client
import io
import ipaddress
import json
import shutil
import ssl
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support import Process, free_port, wait_for

WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_TAR_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
FORMATS = ("wasm-1-layer", "wasm-2-layers", "docker-image", "oci-image", "oci-index")


def sha256_digest(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    # mtime 0: the same module gives the same layer digest in every run.
    return gzip.compress(buffer.getvalue(), mtime=0)


@dataclass(frozen=True)
class LocalCa:
    """A CA made for one test session, and a server certificate it signed for 127.0.0.1 and localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @staticmethod
    def create(folder: Path) -> LocalCa:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "controlplane test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        result = LocalCa(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
        result.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        result.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        result.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return result

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@dataclass(frozen=True)
class TokenIssuer:
    """Signs the JWTs of the Docker token protocol that `auth.token` registries accept: ES256 with the
    signing certificate in `x5c`, the same certificate being the registry's root bundle."""

    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    service: str = "test-registry"
    issuer: str = "test-token-issuer"

    @staticmethod
    def create(folder: Path) -> TokenIssuer:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token issuer")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        cert_file = folder / "token-issuer.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return TokenIssuer(key, cert_file)

    def token(self, repository: str, actions: list[str]) -> str:
        cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "puller",
            "aud": self.service,
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + 600,
            "jti": str(now),
            "access": [{"type": "repository", "name": repository, "actions": actions}],
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@contextmanager
def token_server(issuer: TokenIssuer, login: tuple[str, str]) -> Iterator[tuple[int, list[str]]]:
    """A token service: answers `GET /token?scope=repository:NAME:pull` with a pull token when the request
    carries `login` as basic auth, or anyone for repositories under `public/` (as Docker Hub does for public
    images), and 401 otherwise. Yields its port and the scopes it was asked for."""
    asked: list[str] = []
    expected = "Basic " + base64.b64encode(":".join(login).encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            query = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p)
            scope = query.get("scope", "").replace("%3A", ":").replace("%2F", "/")
            asked.append(scope)
            repository = scope.split(":")[1] if scope.count(":") == 2 else ""
            anonymous_ok = repository.startswith("public/")
            if query.get("service") != issuer.service or (
                self.headers.get("Authorization") != expected and not anonymous_ok
            ):
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"token": issuer.token(repository, ["pull"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], asked
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Registry:
    """One `docker-registry serve` process; `stop` and `start` keep its storage, as a restart would."""

    folder: Path
    port: int
    tls: LocalCa | None = None
    login: tuple[str, str] | None = None
    token_auth: tuple[TokenIssuer, str] | None = None
    """The issuer whose tokens the registry accepts, and the token service's realm url."""
    process: Process | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        config: dict[str, Any] = {
            "version": 0.1,
            # The access log tells tests which requests a pull made.
            "log": {"level": "warn", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.folder / "storage")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "test-only-secret"},
        }
        if self.tls is not None:
            config["http"]["tls"] = {"certificate": str(self.tls.cert_file), "key": str(self.tls.key_file)}
        if self.login is not None:
            user, password = self.login
            line = f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
            (self.folder / "htpasswd").write_text(line)
            config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(self.folder / "htpasswd")}}
        if self.token_auth is not None:
            issuer, realm = self.token_auth
            config["auth"] = {
                "token": {
                    "realm": realm,
                    "service": issuer.service,
                    "issuer": issuer.issuer,
                    "rootcertbundle": str(issuer.cert_file),
                }
            }
        config_file = self.folder / "config.yml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        executable = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.process = Process(f"registry-{self.port}", [executable, "serve", str(config_file)], self.folder)
        wait_for(lambda: self._request("GET", "/v2/")[0] in (200, 401), what=f"registry on {self.host}")
        return self

    def requests_logged(self, method: str, path_prefix: str) -> int:
        """How many `method` requests for paths under `path_prefix` the registry's access log holds. The
        registry logs a request after answering it, so first a marker request is sent and awaited in the
        log: every request answered before this call is counted."""
        assert self.process is not None
        marker = f"/v2/log-marker/manifests/{uuid.uuid4()}"
        self._request("GET", marker)
        process = self.process
        wait_for(lambda: marker in process.log(), what="the registry to log a request")
        return process.log().count(f'"{method} {path_prefix}')

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    # --- pushing ---------------------------------------------------------------------------------------

    def push_blob(self, repository: str, content: bytes) -> dict[str, Any]:
        """Uploads a blob (monolithic: POST, then PUT with the digest) and returns its descriptor fields."""
        digest = sha256_digest(content)
        status, headers, body = self._request("POST", f"/v2/{repository}/blobs/uploads/")
        assert status == 202, (status, body)
        location = headers["location"]
        separator = "&" if "?" in location else "?"
        status, _, body = self._request("PUT", f"{location}{separator}digest={digest}", content)
        assert status == 201, (status, body)
        return {"digest": digest, "size": len(content)}

    def push_manifest(self, repository: str, reference: str, manifest: dict[str, Any]) -> str:
        """PUTs a manifest under a tag (or its digest) and returns its digest."""
        content = json.dumps(manifest, indent=1).encode()
        status, _, body = self._request(
            "PUT", f"/v2/{repository}/manifests/{reference}", content, {"Content-Type": manifest["mediaType"]}
        )
        assert status == 201, (status, body)
        return sha256_digest(content)

    def push_manifest_by_digest(self, repository: str, manifest: dict[str, Any]) -> str:
        """PUTs a manifest under its own digest, untagged (as referrers are pushed), and returns the digest."""
        return self.push_manifest(repository, sha256_digest(json.dumps(manifest, indent=1).encode()), manifest)

    def manifest_or_none(self, repository: str, reference: str) -> dict[str, Any] | None:
        status, _, body = self._request(
            "GET", f"/v2/{repository}/manifests/{reference}", accept=f"{OCI_MANIFEST}, {OCI_INDEX}"
        )
        return json.loads(body) if status == 200 else None

    def descriptor(self, repository: str, reference: str) -> dict[str, Any]:
        """`mediaType`, `size` and `digest` of a manifest (by tag or digest), as a `subject` names it."""
        status, headers, body = self._request(
            "GET", f"/v2/{repository}/manifests/{reference}", accept=f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}"
        )
        assert status == 200, (status, body)
        return {"mediaType": headers["content-type"], "size": len(body), "digest": sha256_digest(body)}

    def delete_manifest(self, repository: str, digest: str) -> None:
        status, _, body = self._request("DELETE", f"/v2/{repository}/manifests/{digest}")
        assert status == 202, (status, body)

    def push(self, repository: str, tag: str, module: bytes, image_format: str = "wasm-2-layers") -> str:
        """Pushes `module` in one of FORMATS and returns the digest of what the tag points at."""
        if image_format == "oci-index":
            inner = self.push(repository, f"{tag}-amd64", module, "oci-image")
            other = self.push(repository, f"{tag}-arm64", b"\0asm\1\0\0\0", "oci-image")
            index = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    self._manifest_descriptor(repository, other, {"os": "linux", "architecture": "arm64"}),
                    self._manifest_descriptor(repository, inner, {"os": "linux", "architecture": "amd64"}),
                ],
            }
            return self.push_manifest(repository, tag, index)
        return self.push_manifest(repository, tag, self.manifest(repository, module, image_format))

    def manifest(self, repository: str, module: bytes, image_format: str) -> dict[str, Any]:
        if image_format in ("wasm-1-layer", "wasm-2-layers"):
            layers = [{"mediaType": WASM_LAYER, **self.push_blob(repository, module)}]
            config = {"mediaType": WASM_CONFIG, **self.push_blob(repository, b"{}")}
            if image_format == "wasm-2-layers":
                # The layout Istio's agent insists on: the config pushed as a layer too.
                layers.insert(0, {"mediaType": WASM_CONFIG, **self.push_blob(repository, b"{}")})
            return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
        image_config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        base_layer = tar_gz({"README": b"a layer before the one holding the module\n"})
        module_layer = tar_gz({"plugin.wasm": module})
        if image_format == "docker-image":
            config_type, manifest_type, layer_type = DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_TAR_GZIP
        elif image_format == "oci-image":
            config_type, manifest_type, layer_type = OCI_CONFIG, OCI_MANIFEST, OCI_TAR_GZIP
        else:
            raise ValueError(image_format)
        return {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, **self.push_blob(repository, image_config)},
            "layers": [
                {"mediaType": layer_type, **self.push_blob(repository, base_layer)},
                {"mediaType": layer_type, **self.push_blob(repository, module_layer)},
            ],
        }

    def _manifest_descriptor(self, repository: str, digest: str, platform: dict[str, str]) -> dict[str, Any]:
        status, headers, body = self._request("GET", f"/v2/{repository}/manifests/{digest}", accept=OCI_MANIFEST)
        assert status == 200, (status, body)
        return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body), "platform": platform}

    def _request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        accept: str = "",
    ) -> tuple[int, dict[str, str], bytes]:
        if target.startswith("http"):  # an upload Location is absolute
            target = "/" + target.split("/", 3)[3]
        if self.tls is not None:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=self.tls.client_context(), timeout=10
            )
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        all_headers = dict(headers or {})
        if accept:
            all_headers["Accept"] = accept
        if self.login is not None:
            all_headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.login).encode()).decode()
        if self.token_auth is not None and target.startswith("/v2/") and target != "/v2/":
            repository = target[len("/v2/") :].split("/blobs/")[0].split("/manifests/")[0]
            all_headers["Authorization"] = "Bearer " + self.token_auth[0].token(repository, ["pull", "push"])
        try:
            connection.request(method, target, body=body, headers=all_headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()


def start_registry(
    folder: Path,
    tls: LocalCa | None = None,
    login: tuple[str, str] | None = None,
    token_auth: tuple[TokenIssuer, str] | None = None,
) -> Registry:
    folder.mkdir(parents=True, exist_ok=True)
    return Registry(folder, free_port(), tls, login, token_auth).start()


def docker_config_json(registry: str, user: str, password: str) -> str:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"auth": auth}}})
