"""HTTP(S) transport shared by the plain-download and registry fetchers: TLS settings, size-capped reads,
retries with exponential backoff, and messages that never carry a credential."""

from __future__ import annotations

import http.client
import logging
import random
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from controlplane.model import RegistryCredential
from controlplane.modules.credentials import CredentialHelpers

log = logging.getLogger(__name__)
T = TypeVar("T")

# Server errors that a retry will not cure (Istio's agent does not retry them either).
_PERMANENT_SERVER_ERRORS = frozenset({501, 505, 511})


class FetchFailed(Exception):
    """The module could not be had; the message is safe to log (it names no credential)."""


DEFAULT_MAX_MODULE_BYTES = 256 * 1024 * 1024
"""Istio's agent caps modules at the same size."""


@dataclass(frozen=True)
class FetchSettings:
    max_bytes: int = DEFAULT_MAX_MODULE_BYTES
    timeout_seconds: float = 15.0
    """For each connect and socket read."""
    download_seconds: float = 300.0
    """For a whole download, retries included: a server that drips bytes slowly holds no fetch (and no
    per-url lock) for longer than this."""
    retries: int = 2
    """Quick retries inside one fetch; the resolver keeps retrying failed modules in the background."""
    first_backoff_seconds: float = 0.5
    registry_ca: str = ""
    """A PEM file of CAs trusted for registries and downloads, besides the system's."""
    insecure_registries: frozenset[str] = frozenset()
    """`host[:port]`s reached over plain HTTP."""
    docker_credentials: tuple[RegistryCredential, ...] = field(default=(), repr=False)
    credential_helpers: CredentialHelpers = CredentialHelpers()
    """From `--docker-config` or `$DOCKER_CONFIG`, for registries a plugin's pull secret does not cover."""


@dataclass(frozen=True)
class Fetched:
    content: bytes
    digests: frozenset[str] = frozenset()
    """Other sha256s the content goes by, which a plugin's `sha256` may give: for OCI, the digests of the
    manifest (and of the image index) it came through."""
    manifest: str = ""
    """For OCI, the digest (`sha256:<hex>`) the reference resolved to: a later pull that finds the same one
    can keep the module it has."""
    as_served: bytes | None = field(default=None, repr=False)
    """For http(s), the bytes as downloaded when unpacking (gzip, tar) changed them: what a detached
    signature (`cosign sign-blob`) of the file covers. None: `content` itself."""


def tls_context(settings: FetchSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.registry_ca:
        context.load_verify_locations(cafile=settings.registry_ca)
    return context


def deadline(settings: FetchSettings) -> float:
    """The `time.monotonic()` by which a download that starts now must be done."""
    return time.monotonic() + settings.download_seconds


def call_with_retries(call: Callable[[], T], what: str, settings: FetchSettings, until: float) -> T:
    """Runs `call` (blocking: from a worker thread), retrying network errors and 5xx with exponential
    backoff and jitter, but not past `until`. Any other exception goes straight through."""
    delay = settings.first_backoff_seconds
    for attempt in range(settings.retries + 1):
        try:
            return call()
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
            retry = exc.code >= 500 and exc.code not in _PERMANENT_SERVER_ERRORS
        except (urllib.error.URLError, OSError) as exc:
            # An untrusted certificate stays untrusted however often it is asked.
            reason = network_reason(exc)
            retry = not isinstance(getattr(exc, "reason", exc), ssl.SSLCertVerificationError)
        except http.client.InvalidURL:
            # Its message quotes the url, login and query included.
            raise FetchFailed(f"{what} failed: not a valid url (a space, a control character or a bad port)") from None
        except http.client.HTTPException as exc:  # a connection cut mid-body, a garbled status line
            reason, retry = f"{type(exc).__name__}: {exc}", True
        if not retry or attempt == settings.retries or time.monotonic() + delay >= until:
            raise FetchFailed(f"{what} failed: {reason}")
        log.info("%s failed (%s); retrying in %.1fs", what, reason, delay)
        time.sleep(delay * (0.5 + random.random()))
        delay *= 2
    raise AssertionError("unreachable")


def network_reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ssl.SSLError):
        return (
            f"TLS error: {reason} (a registry with a private CA needs --registry-ca; "
            "a plain-HTTP one --insecure-registry)"
        )
    return str(reason)


def read_capped(response: http.client.HTTPResponse, max_bytes: int, what: str, until: float) -> bytes:
    """The body, refused past `max_bytes` or `until`. Read a piece at a time, as the socket timeout
    applies to each read and a slow drip would otherwise never time out."""
    pieces: list[bytes] = []
    size = 0
    while piece := response.read1(_READ_BYTES):
        size += len(piece)
        if size > max_bytes:
            raise FetchFailed(f"{what} is larger than the limit of {max_bytes} bytes")
        if time.monotonic() > until:
            raise FetchFailed(f"{what} took longer than the download deadline")
        pieces.append(piece)
    return b"".join(pieces)


_READ_BYTES = 1 << 16


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """An http(s) url without its `user:password@`, and that login (decoded), if it had one."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.netloc.rpartition("@")[2]
    login = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), login
