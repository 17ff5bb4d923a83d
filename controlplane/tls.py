"""The server's certificate, its key and the CA its clients must be signed by, read from files and read
again whenever they change (as cert-manager and kubelet rotate a mounted Secret: a `..data` symlink swap, or
files rewritten in place). A new handshake takes the files as they are now; open connections and streams
keep the session they have. A change that does not load (a key written before its certificate, a file
half-written) is logged and the previous credentials keep serving until the files are whole again."""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass

import grpc

log = logging.getLogger(__name__)


class TlsFileError(Exception):
    """The certificate files cannot be read or do not make a usable pair."""


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str = ""
    """With it, clients must present a certificate signed by it (mTLS)."""

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.cert, self.key, self.client_ca) if p)


@dataclass(frozen=True)
class _Loaded:
    signature: tuple[tuple[int, int, int, int], ...]
    cert: bytes
    key: bytes
    client_ca: bytes
    context: ssl.SSLContext


def _signature(files: TlsFiles) -> tuple[tuple[int, int, int, int], ...]:
    """What changes when a file is replaced or rewritten (stat follows the symlinks of a mounted Secret)."""
    result = []
    for path in files.paths:
        info = os.stat(path)
        result.append((info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(result)


def _load(files: TlsFiles) -> _Loaded:
    try:
        signature = _signature(files)
        cert, key = _read(files.cert), _read(files.key)
        client_ca = _read(files.client_ca) if files.client_ca else b""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(files.cert, files.key)  # also checks that the key is the certificate's
        if files.client_ca:
            context.load_verify_locations(cafile=files.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise TlsFileError(f"{', '.join(files.paths)}: {exc}") from None
    # Read again: a rotation between the first stat and the reads would pair an old stat with new bytes.
    if _signature(files) != signature:
        raise TlsFileError(f"{', '.join(files.paths)}: changed while being read")
    return _Loaded(signature, cert, key, client_ca, context)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class ServerTls:
    """The credentials for both the xDS and the HTTP ports. Thread-safe: gRPC asks from its own threads."""

    def __init__(self, files: TlsFiles) -> None:
        """Raises TlsFileError: a server must not start without usable credentials."""
        self.files = files
        self._lock = threading.RLock()
        self._loaded = _load(files)
        self._grpc_seen = self._loaded.signature

    @property
    def mutual(self) -> bool:
        return bool(self.files.client_ca)

    def _current(self) -> _Loaded:
        with self._lock:
            try:
                if _signature(self.files) == self._loaded.signature:
                    return self._loaded
                self._loaded = _load(self.files)
                log.info("TLS certificate files changed; new connections use them (%s)", self.files.cert)
            except (OSError, TlsFileError) as exc:
                log.warning("TLS certificate files not reloaded, the previous ones keep serving: %s", exc)
            return self._loaded

    def ssl_context(self) -> ssl.SSLContext:
        """For one new HTTP connection."""
        return self._current().context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """gRPC asks the fetcher at each handshake; it answers a new configuration only when the files
        changed since it last answered, which leaves established streams as they are."""
        return grpc.dynamic_ssl_server_credentials(
            _grpc_configuration(self._loaded),
            self._grpc_fetch,
            require_client_authentication=self.mutual,
        )

    def _grpc_fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            loaded = self._current()
            if loaded.signature == self._grpc_seen:
                return None
            self._grpc_seen = loaded.signature
            return _grpc_configuration(loaded)


def _grpc_configuration(loaded: _Loaded) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(loaded.key, loaded.cert)], root_certificates=loaded.client_ca or None
    )
