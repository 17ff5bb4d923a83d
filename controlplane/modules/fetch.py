"""Gets a module's bytes from where its url points: a file, an HTTP(S) download, or an OCI registry (also
for urls without a scheme, as in Istio). Verification and caching live elsewhere."""

from __future__ import annotations

import asyncio
import os
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import replace

from controlplane.errors import ConfigError
from controlplane.model import RegistryCredential, WasmPlugin
from controlplane.modules import oci
from controlplane.modules.archive import unpack
from controlplane.modules.download import (
    Fetched,
    FetchFailed,
    FetchSettings,
    call_with_retries,
    deadline,
    read_capped,
    split_userinfo,
    tls_context,
)
from controlplane.redaction import redact
from controlplane.regular_file import read_regular_file


def is_local(url: str) -> bool:
    return url.startswith("file://")


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


async def fetch_module(
    url: str,
    settings: FetchSettings,
    credentials: tuple[RegistryCredential, ...] = (),
    known_manifest: str = "",
    downloads: Executor | None = None,
) -> Fetched | None:
    """`credentials` (from the plugin's pull Secret) are used for OCI registries only. None: the OCI
    reference still resolves to `known_manifest`, so the module the caller has from it is current.
    `downloads`: the threads that wait on the network (default: the loop's). A server that sends slowly holds
    one of them for up to the download deadline, so a server keeps them apart from the threads that its
    other work (reading the config, local files) needs."""
    if is_local(url):
        return Fetched(await asyncio.to_thread(_read_file, url[len("file://") :], settings.max_bytes))
    loop = asyncio.get_running_loop()
    if is_http(url):
        # Unpacking up to --max-module-size is work for a thread too, not for the loop.
        return await loop.run_in_executor(downloads, _download_module, url, settings)
    return await loop.run_in_executor(downloads, oci.pull, url, settings, credentials, known_manifest)


def oversized_local_modules(plugins: Iterable[WasmPlugin], max_bytes: int) -> list[ConfigError]:
    """The `file://` modules over the size limit, as `validate` shows them without any network: such a
    module would only ever run as its failStrategy stand-in."""
    errors = []
    for plugin in plugins:
        if not is_local(plugin.url):
            continue
        path = plugin.url[len("file://") :]
        try:
            size = os.stat(path).st_size
        except OSError:
            continue  # reported when it is fetched, with the reason
        if size > max_bytes:
            reason = f"module {path} is {size} bytes, over the limit of {max_bytes} (--max-module-size)"
            errors.append(ConfigError(plugin.source.path, plugin.source.line, "spec.url", reason))
    return errors


def fetch_small(url: str, settings: FetchSettings, max_bytes: int) -> bytes:
    """Blocking. A small file of a file or http(s) url (a module's detached signature), read as modules are."""
    if is_local(url):
        return _read_file(url[len("file://") :], max_bytes)
    return _download(url, replace(settings, max_bytes=max_bytes))


def _download_module(url: str, settings: FetchSettings) -> Fetched:
    served = _download(url, settings)
    content = unpack(served, settings.max_bytes)
    return Fetched(content, as_served=None if content is served else served)


def _read_file(path: str, max_bytes: int) -> bytes:
    try:
        content = read_regular_file(path, max_bytes)
    except OSError as exc:
        raise FetchFailed(f"cannot read {path}: {exc.strerror}") from None
    if len(content) > max_bytes:
        raise FetchFailed(f"{path} is larger than the limit of {max_bytes} bytes")
    return content


def _download(url: str, settings: FetchSettings) -> bytes:
    until = deadline(settings)
    plain_url, login = split_userinfo(url)
    opener = _opener(plain_url, login, settings)

    def get() -> bytes:
        with opener.open(plain_url, timeout=settings.timeout_seconds) as response:
            return read_capped(response, settings.max_bytes, redact(url), until)

    return call_with_retries(get, f"download of {redact(url)}", settings, until)


def _opener(url: str, login: tuple[str, str] | None, settings: FetchSettings) -> urllib.request.OpenerDirector:
    """`user:password@` in a url is HTTP basic auth, sent up front (release servers rarely challenge) to
    that scheme, host and port only: a redirect elsewhere (object storage, a CDN) does not get it."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=tls_context(settings))]
    if login is not None:
        passwords = urllib.request.HTTPPasswordMgrWithPriorAuth()
        origin = urllib.parse.urlsplit(url)
        passwords.add_password(None, f"{origin.scheme}://{origin.netloc}/", *login, is_authenticated=True)
        handlers.append(urllib.request.HTTPBasicAuthHandler(passwords))
    return urllib.request.build_opener(*handlers)
