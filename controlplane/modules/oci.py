"""Pulls a module from an OCI registry over the distribution API (`/v2/<repository>/manifests|blobs/...`):
anonymous, bearer-token and basic auth, TLS unless the host was declared insecure. Blocking: run it in a
worker thread. Which layer holds the module is `image.py`'s business."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from typing import Any

from controlplane.image_reference import DOCKER_HUB, ImageReference, InvalidReference, parse_reference
from controlplane.model import RegistryCredential
from controlplane.modules.archive import unpack
from controlplane.modules.credentials import credential_for
from controlplane.modules.download import (
    Fetched,
    FetchFailed,
    FetchSettings,
    call_with_retries,
    deadline,
    read_capped,
    tls_context,
)
from controlplane.modules.image import (
    ACCEPTED_MANIFESTS,
    INDEX_TYPES,
    OCI_INDEX,
    Descriptor,
    choose_manifest,
    media_type,
    module_layer,
)

DOCKER_HUB_API = "registry-1.docker.io"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit
# A gzip of an incompressible module is a little larger than the module; the cap applies after unpacking.
_ARCHIVE_SLACK_BYTES = 1024 * 1024
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class NotFound(FetchFailed):
    """The registry answered 404: a signature or referrer that is not there, rather than a failure."""


def pull(
    url: str, settings: FetchSettings, credentials: tuple[RegistryCredential, ...] = (), known_manifest: str = ""
) -> Fetched | None:
    """The module of an image, with the digests of the manifests it came through; None when the reference
    still names `known_manifest` (`sha256:<hex>`), whose module the caller has: only the manifest is fetched,
    as a re-pull of an unchanged tag need not download the module again."""
    registry = open_repository(url, settings, credentials)
    image = registry.image
    manifest, digest, kind = registry.manifest(image.reference)
    if known_manifest and digest == known_manifest:
        return None
    top, digests = digest, {digest}
    if kind in INDEX_TYPES:
        manifest, digest, kind = registry.manifest(choose_manifest(manifest).digest)
        digests.add(digest)
    layer = module_layer(manifest)
    limit = settings.max_bytes + (_ARCHIVE_SLACK_BYTES if layer.member else 0)
    if layer.blob.size > limit:
        raise FetchFailed(f"{image}: module layer is {layer.blob.size} bytes, over the limit of {settings.max_bytes}")
    blob = registry.blob(layer.blob, limit)
    content = unpack(blob, settings.max_bytes, layer.member) if layer.member else blob
    return Fetched(content, frozenset(d.removeprefix("sha256:") for d in digests), top)


def open_repository(url: str, settings: FetchSettings, credentials: tuple[RegistryCredential, ...] = ()) -> _Registry:
    """The repository an image url names, logged in as a pull of it would be."""
    try:
        image = parse_reference(url)
    except InvalidReference as exc:
        raise FetchFailed(str(exc)) from None
    credential = credential_for(image.registry, credentials, settings.docker_credentials, settings.credential_helpers)
    return _Registry(image, settings, credential)


class _Registry:
    """One repository of one registry, for the length of one pull: keeps the token it was given."""

    def __init__(self, image: ImageReference, settings: FetchSettings, credential: RegistryCredential | None) -> None:
        self._image = image
        self._settings = settings
        self._credential = credential
        self._insecure = image.registry in settings.insecure_registries
        host = DOCKER_HUB_API if image.registry == DOCKER_HUB else image.registry
        self._base = f"{'http' if self._insecure else 'https'}://{host}/v2/{image.repository}"
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls_context(settings)))
        self._authorization = ""
        self._until = deadline(settings)
        """One deadline for the manifests, token and blob of this pull."""

    @property
    def image(self) -> ImageReference:
        return self._image

    def manifest(self, reference: str) -> tuple[dict[str, Any], str, str]:
        """The manifest's JSON, its digest and its media type; a manifest asked for by digest must have it."""
        separator = "@" if reference.startswith("sha256:") else ":"
        what = f"manifest {self._image.registry}/{self._image.repository}{separator}{reference}"
        body, headers = self._get(f"/manifests/{reference}", ", ".join(ACCEPTED_MANIFESTS), MAX_MANIFEST_BYTES, what)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise FetchFailed(f"{what}: the registry sent a manifest whose digest is {digest}")
        try:
            manifest = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FetchFailed(f"{what}: not JSON") from None
        if not isinstance(manifest, dict):
            raise FetchFailed(f"{what}: not a JSON object")
        return manifest, digest, media_type(manifest, headers.get("Content-Type", ""))

    def referrers(self, digest: str) -> dict[str, Any] | None:
        """The OCI 1.1 referrers index of a manifest; None when the registry has no referrers API (404), as
        distribution 2.x: then clients find referrers under the `sha256-<hex>` tag instead."""
        what = f"referrers of {self._image.registry}/{self._image.repository}@{digest}"
        try:
            body, _ = self._get(f"/referrers/{digest}", OCI_INDEX, MAX_MANIFEST_BYTES, what)
        except NotFound:
            return None
        try:
            index = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FetchFailed(f"{what}: not JSON") from None
        return index if isinstance(index, dict) else None

    def blob(self, descriptor: Descriptor, limit: int) -> bytes:
        what = f"blob {self._image.registry}/{self._image.repository}@{descriptor.digest}"
        body, _ = self._get(f"/blobs/{descriptor.digest}", "*/*", limit, what)
        if "sha256:" + hashlib.sha256(body).hexdigest() != descriptor.digest:
            raise FetchFailed(f"{what}: content does not match its digest")
        return body

    def _get(self, path: str, accept: str, limit: int, what: str) -> tuple[bytes, Message]:
        return call_with_retries(
            lambda: self._get_once(self._base + path, accept, limit, what), what, self._settings, self._until
        )

    def _get_once(self, url: str, accept: str, limit: int, what: str) -> tuple[bytes, Message]:
        try:
            return self._open(url, accept, limit, what)
        except urllib.error.HTTPError as exc:
            if exc.code != 401 or self._authorization:
                raise _client_error(exc, what, self._image.registry) from None
            challenge = exc.headers.get("WWW-Authenticate", "")
        self._authorization = self._authorize(challenge)
        try:
            return self._open(url, accept, limit, what)
        except urllib.error.HTTPError as exc:
            raise _client_error(exc, what, self._image.registry) from None

    def _open(self, url: str, accept: str, limit: int, what: str) -> tuple[bytes, Message]:
        request = urllib.request.Request(url, headers={"Accept": accept})
        if self._authorization:
            # Unredirected: blob downloads are often redirected to storage that must not see the credential.
            request.add_unredirected_header("Authorization", self._authorization)
        with self._opener.open(request, timeout=self._settings.timeout_seconds) as response:
            return read_capped(response, limit, what, self._until), response.headers

    def _authorize(self, challenge: str) -> str:
        """The Authorization header value that answers a registry's 401 challenge."""
        scheme = challenge.split(" ", 1)[0].lower()
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        registry = self._image.registry
        if scheme == "basic":
            if self._credential is None:
                raise FetchFailed(f"{registry} requires a login and no credential is configured for it")
            return "Basic " + _basic(self._credential)
        if scheme != "bearer" or "realm" not in params:
            raise FetchFailed(f"{registry} asked for an unsupported authentication ({scheme or 'none'})")
        return "Bearer " + self._token(params)

    def _token(self, params: dict[str, str]) -> str:
        realm = urllib.parse.urlsplit(params["realm"])
        if realm.scheme != "https" and not (
            realm.scheme == "http" and realm.netloc in self._settings.insecure_registries
        ):
            raise FetchFailed(f"{self._image.registry}: token service {realm.netloc} is not HTTPS; refusing it")
        query = {"scope": params.get("scope") or f"repository:{self._image.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        url = urllib.parse.urlunsplit(realm._replace(query=urllib.parse.urlencode(query)))
        request = urllib.request.Request(url)
        if self._credential is not None:
            request.add_unredirected_header("Authorization", "Basic " + _basic(self._credential))
        what = f"token for {self._image.registry}/{self._image.repository} from {realm.netloc}"

        def fetch() -> bytes:
            try:
                with self._opener.open(request, timeout=self._settings.timeout_seconds) as response:
                    return read_capped(response, MAX_MANIFEST_BYTES, what, self._until)
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise FetchFailed(f"{what}: refused (HTTP {exc.code}); check the registry credential") from None
                raise

        try:
            answer = json.loads(call_with_retries(fetch, what, self._settings, self._until))
            token = answer.get("token") or answer.get("access_token")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise FetchFailed(f"{what}: the answer holds no token")
        return token


Repository = _Registry
"""What `open_repository` gives: manifests, referrers and blobs of one repository."""


def _basic(credential: RegistryCredential) -> str:
    return base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode("ascii")


def _client_error(exc: urllib.error.HTTPError, what: str, registry: str) -> Exception:
    """4xx answers as clear failures; anything else is left for the retry loop to judge."""
    if exc.code == 401:
        return FetchFailed(f"{what}: {registry} refused the credential (HTTP 401)")
    if exc.code == 403:
        return FetchFailed(f"{what}: access denied (HTTP 403)")
    if exc.code == 404:
        return NotFound(f"{what}: not found")
    if exc.code == 400 and f"http://{registry}/" in exc.url:
        return FetchFailed(f"{what}: HTTP 400 (is {registry}, given as --insecure-registry, an HTTPS registry?)")
    if 400 <= exc.code < 500:
        return FetchFailed(f"{what}: HTTP {exc.code}")
    return exc
