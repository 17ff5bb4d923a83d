"""How Istio reads an OCI image reference in a WasmPlugin url. Pure, so that the loader can check a url's
form without the network and the puller can act on it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from controlplane.redaction import redact

DOCKER_HUB = "docker.io"
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_ANY_DIGEST = re.compile(r"^[A-Za-z0-9+._-]+:[A-Fa-f0-9]+$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


class InvalidReference(ValueError):
    """The url is not an image reference; the message says which part is wrong."""


@dataclass(frozen=True)
class ImageReference:
    registry: str
    """`host[:port]`; `docker.io` for Docker Hub."""
    repository: str
    tag: str
    """Empty when pinned by digest alone."""
    digest: str
    """`sha256:<hex>` or empty."""

    @property
    def reference(self) -> str:
        return self.digest or self.tag

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag}")


def parse_reference(url: str) -> ImageReference:
    """`oci://host[:port]/repo[:tag][@sha256:...]`, or the same without a scheme, as Istio reads it; a first
    component without `.` or `:` (and not `localhost`) means Docker Hub."""
    shown = redact(url)  # the url may hold a login: messages quote it without
    name = url.removeprefix("oci://")
    name, _, digest = name.rpartition("@") if "@" in name else (name, "", "")
    if "@" in name or (digest and not _ANY_DIGEST.match(digest)):
        raise InvalidReference(f"{shown}: a login cannot be given in the url; name a pull Secret in imagePullSecret")
    if digest and not _DIGEST.match(digest):
        raise InvalidReference(f"{shown}: digest must be sha256: and 64 lowercase hex characters")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, name
    tag = ""
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _REPOSITORY.match(path):
        raise InvalidReference(f"{shown}: not a valid repository name")
    if tag and not _TAG.match(tag):
        raise InvalidReference(f"{shown}: not a valid tag")
    return ImageReference(registry, path, tag or ("" if digest else "latest"), digest)
