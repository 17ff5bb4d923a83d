"""Checks that a module is one Envoy can run, before any proxy is told to load it: a module Envoy cannot
load is a NACK, and a plugin that never ran anywhere would only ever be its stand-in."""

from __future__ import annotations

import hashlib

import wasmtime

from controlplane.modules.download import DEFAULT_MAX_MODULE_BYTES

WASM_MAGIC = b"\0asm"
ABI_VERSION_EXPORTS = ("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0", "proxy_abi_version_0_1_0")


class ModuleRejected(Exception):
    """The bytes are not a usable module; the message says why, for the plugin's status and the log."""


def verify_module(
    content: bytes,
    expected_sha256: str = "",
    max_bytes: int = DEFAULT_MAX_MODULE_BYTES,
    aliases: frozenset[str] = frozenset(),
) -> str:
    """Returns the module's sha256, or raises ModuleRejected. `expected_sha256` may be the module's own
    digest or one of its `aliases` (for OCI, the manifest digest: Istio's meaning of the field)."""
    if len(content) > max_bytes:
        raise ModuleRejected(f"module is {len(content)} bytes, over the limit of {max_bytes}")
    sha256 = hashlib.sha256(content).hexdigest()
    if expected_sha256 and expected_sha256 != sha256 and expected_sha256 not in aliases:
        via = f" (manifest {', '.join(sorted(aliases))})" if aliases else ""
        raise ModuleRejected(f"sha256 mismatch: expected {expected_sha256}, got {sha256}{via}")
    if len(content) < 8 or not content.startswith(WASM_MAGIC):
        raise ModuleRejected("not a WebAssembly module (no \\0asm magic)")
    try:
        module = wasmtime.Module(wasmtime.Engine(), content)
    except wasmtime.WasmtimeError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid module"
        raise ModuleRejected(f"module does not compile: {first_line}") from None
    exports = {export.name for export in module.exports}
    if not exports.intersection(ABI_VERSION_EXPORTS):
        raise ModuleRejected(f"module exports no proxy-wasm ABI version ({', '.join(ABI_VERSION_EXPORTS)})")
    return sha256
