"""Gets a module's bytes from where its url points. Verification and caching live elsewhere."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import random
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"


class FetchFailed(Exception):
    """The module could not be had; the message is safe to log (it names no credential)."""


@dataclass(frozen=True)
class FetchSettings:
    max_bytes: int = 256 * 1024 * 1024
    timeout_seconds: float = 15.0
    retries: int = 5
    first_backoff_seconds: float = 0.5


async def fetch_module(url: str, settings: FetchSettings) -> bytes:
    if url.startswith("file://"):
        return await asyncio.to_thread(_read_file, url[len("file://") :], settings.max_bytes)
    if url.startswith(("http://", "https://")):
        return unpack(await _download(url, settings), settings.max_bytes)
    raise FetchFailed("OCI registries are not supported yet (oci:// and scheme-less urls)")


def _read_file(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            content = handle.read(max_bytes + 1)
    except OSError as exc:
        raise FetchFailed(f"cannot read {path}: {exc.strerror}") from None
    if len(content) > max_bytes:
        raise FetchFailed(f"{path} is larger than the limit of {max_bytes} bytes")
    return content


_PERMANENT_SERVER_ERRORS = frozenset({501, 505, 511})


async def _download(url: str, settings: FetchSettings) -> bytes:
    delay = settings.first_backoff_seconds
    for attempt in range(settings.retries + 1):
        try:
            return await asyncio.to_thread(_get, url, settings)
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
            retry = exc.code >= 500 and exc.code not in _PERMANENT_SERVER_ERRORS
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
            retry = True
        if not retry or attempt == settings.retries:
            raise FetchFailed(f"download of {_redact(url)} failed: {reason}")
        log.info("download of %s failed (%s); retrying in %.1fs", _redact(url), reason, delay)
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay *= 2
    raise AssertionError("unreachable")


def _get(url: str, settings: FetchSettings) -> bytes:
    with urllib.request.urlopen(url, timeout=settings.timeout_seconds) as response:
        content = response.read(settings.max_bytes + 1)
    if len(content) > settings.max_bytes:
        raise FetchFailed(f"{_redact(url)} is larger than the limit of {settings.max_bytes} bytes")
    return content


def unpack(content: bytes, max_bytes: int) -> bytes:
    """A gzip or tar wrapper around a module, as HTTP servers and release pages often deliver it."""
    if content.startswith(GZIP_MAGIC):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(content)) as stream:
                content = stream.read(max_bytes + 1)
        except (OSError, EOFError) as exc:
            raise FetchFailed(f"bad gzip data: {exc}") from None
        if len(content) > max_bytes:
            raise FetchFailed(f"unpacked module is larger than the limit of {max_bytes} bytes")
    if len(content) > 262 and content[257:262] == b"ustar":
        with tarfile.open(fileobj=io.BytesIO(content)) as archive:
            members = [m for m in archive.getmembers() if m.isfile()]
            wasm = [m for m in members if m.name.endswith(".wasm")] or members
            if not wasm:
                raise FetchFailed("tar archive holds no file")
            if wasm[0].size > max_bytes:
                raise FetchFailed(f"{wasm[0].name} is larger than the limit of {max_bytes} bytes")
            extracted = archive.extractfile(wasm[0])
            assert extracted is not None
            content = extracted.read()
    return content


def _redact(url: str) -> str:
    """A url without user information or query, which may carry credentials."""
    scheme, _, rest = url.partition("://")
    host_and_path = rest.rsplit("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest
    return f"{scheme}://{host_and_path.split('?', 1)[0]}"
