"""Gets a module's bytes from where its url points: a file, an HTTP(S) download, or an OCI registry (also
for urls without a scheme, as in Istio). Verification and caching live elsewhere."""

from __future__ import annotations

import asyncio
import urllib.request

from controlplane.model import RegistryCredential
from controlplane.modules import oci
from controlplane.modules.archive import unpack
from controlplane.modules.download import (
    Fetched,
    FetchFailed,
    FetchSettings,
    call_with_retries,
    read_capped,
    redact,
    tls_context,
)

__all__ = ["FetchFailed", "Fetched", "FetchSettings", "fetch_module", "is_local"]


def is_local(url: str) -> bool:
    return url.startswith("file://")


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


async def fetch_module(url: str, settings: FetchSettings, credentials: tuple[RegistryCredential, ...] = ()) -> Fetched:
    """`credentials` (from the plugin's pull Secret) are used for OCI registries only."""
    if is_local(url):
        return Fetched(await asyncio.to_thread(_read_file, url[len("file://") :], settings.max_bytes))
    if is_http(url):
        content = await asyncio.to_thread(
            call_with_retries, lambda: _get(url, settings), f"download of {redact(url)}", settings
        )
        return Fetched(unpack(content, settings.max_bytes))
    return await asyncio.to_thread(oci.pull, url, settings, credentials)


def _read_file(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            content = handle.read(max_bytes + 1)
    except OSError as exc:
        raise FetchFailed(f"cannot read {path}: {exc.strerror}") from None
    if len(content) > max_bytes:
        raise FetchFailed(f"{path} is larger than the limit of {max_bytes} bytes")
    return content


def _get(url: str, settings: FetchSettings) -> bytes:
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls_context(settings)))
    with opener.open(url, timeout=settings.timeout_seconds) as response:
        return read_capped(response, settings.max_bytes, redact(url))
