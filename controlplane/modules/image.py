"""Where the module is inside an OCI or Docker manifest: pure functions over manifest JSON.

Accepted, as Istio's agent does and beyond: the Wasm OCI artifact (a `...wasm.content.layer.v1+wasm` layer,
with or without a config layer: Istio insists on two layers, users asked for one), Docker and OCI images
whose last layer is a tar(.gz) holding `plugin.wasm`, and image indexes (multi-arch) pointing to either."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.modules.download import FetchFailed

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPTED_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

WASM_LAYERS = frozenset(
    {
        "application/vnd.module.wasm.content.layer.v1+wasm",  # Solo's and Istio's Wasm artifact
        "application/vnd.wasm.content.layer.v1+wasm",  # the CNCF Wasm OCI artifact
    }
)
IMAGE_LAYERS = frozenset(
    {
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar",
    }
)
IMAGE_MODULE_FILE = "plugin.wasm"
# Platforms an index entry may carry for a module, best first: Wasm's own, then what Istio's agent picks.
_PREFERRED_PLATFORMS = (("wasip1", "wasm"), ("wasi", "wasm"), ("linux", "amd64"))


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    """`sha256:<hex>`."""
    size: int


@dataclass(frozen=True)
class ModuleLayer:
    blob: Descriptor
    member: str
    """Empty: the blob is the module; else the file to take from the tar(.gz) blob."""


def media_type(manifest: Mapping[str, Any], content_type: str) -> str:
    """A manifest's own mediaType field wins over the Content-Type header, which proxies may rewrite."""
    declared = manifest.get("mediaType")
    return declared if isinstance(declared, str) and declared else content_type.split(";", 1)[0].strip()


def choose_manifest(index: Mapping[str, Any]) -> Descriptor:
    """The entry of an image index to pull: a Wasm platform, else linux/amd64, else the first."""
    entries = [_descriptor(entry, "manifests") for entry in _list(index, "manifests")]
    if not entries:
        raise FetchFailed("image index lists no manifest")
    platforms = [
        (str(p.get("os", "")), str(p.get("architecture", "")))
        for p in (entry.get("platform") or {} for entry in _list(index, "manifests"))
    ]
    for preferred in _PREFERRED_PLATFORMS:
        if preferred in platforms:
            return entries[platforms.index(preferred)]
    return entries[0]


def module_layer(manifest: Mapping[str, Any]) -> ModuleLayer:
    layers = [_descriptor(layer, "layers") for layer in _list(manifest, "layers")]
    wasm = [layer for layer in layers if layer.media_type in WASM_LAYERS]
    if len(wasm) == 1:
        return ModuleLayer(wasm[0], "")
    if len(wasm) > 1:
        raise FetchFailed(f"manifest has {len(wasm)} Wasm layers; expected one")
    if layers and layers[-1].media_type in IMAGE_LAYERS:
        return ModuleLayer(layers[-1], IMAGE_MODULE_FILE)
    kinds = ", ".join(layer.media_type for layer in layers) or "none"
    raise FetchFailed(
        f"manifest holds no Wasm module: expected a Wasm layer or an image whose last layer holds "
        f"{IMAGE_MODULE_FILE} (layers: {kinds})"
    )


def _list(manifest: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = manifest.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FetchFailed(f"manifest has no {key} list")
    return value


def _descriptor(entry: Mapping[str, Any], where: str) -> Descriptor:
    digest, size = entry.get("digest"), entry.get("size")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise FetchFailed(f"manifest {where}: descriptor without a sha256 digest")
    if not isinstance(size, int) or size < 0:
        raise FetchFailed(f"manifest {where}: descriptor {digest} without a size")
    return Descriptor(str(entry.get("mediaType", "")), digest, size)
