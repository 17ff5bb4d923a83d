"""Turns one YAML document into a model value, checking what Istio's schema and admission would."""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from controlplane.api import sidecar_pb2, wasmplugin_pb2
from controlplane.errors import ConfigError
from controlplane.image_reference import InvalidReference, parse_reference
from controlplane.model import (
    EnvVar,
    FailStrategy,
    IngressPort,
    Phase,
    PluginType,
    PullPolicy,
    PullSecret,
    Sidecar,
    SourceRef,
    TargetRef,
    TrafficSelector,
    WasmPlugin,
    WorkloadMode,
    labels_from,
)
from controlplane.source.schema import Problem, parse_message
from controlplane.source.secrets import DOCKER_CONFIG_JSON_TYPE, SECRET_API_VERSIONS, read_pull_secret
from controlplane.source.yaml_documents import FieldPath, YamlDocument, format_field_path
from controlplane.verification_keys import InvalidKey, canonical_pem

log = logging.getLogger(__name__)

WASM_PLUGIN_API_VERSIONS = frozenset({"extensions.istio.io/v1alpha1"})
SIDECAR_API_VERSIONS = frozenset(
    {"networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"}
)
DEFAULT_NAMESPACE = "default"
"""Of a document without metadata.namespace (as `kubectl apply`) and of a proxy without NAMESPACE."""
URL_SCHEMES = ("oci://", "file://", "http://", "https://")

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SHA256 = re.compile(r"^[a-f0-9]{64}$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]*):([0-9]{1,5})$")


@dataclass(frozen=True)
class DocumentKey:
    """Two documents with the same key declare the same object."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


Declared = WasmPlugin | Sidecar | PullSecret


@dataclass(frozen=True)
class DocumentResult:
    """One document: its value when valid, its key when it could be read, and what was wrong."""

    key: DocumentKey | None
    value: Declared | None
    errors: tuple[ConfigError, ...]
    source: SourceRef
    warnings: tuple[ConfigError, ...] = ()
    """Valid, but probably not what its author meant."""


def read_document(document: YamlDocument) -> DocumentResult | None:
    """None for a document of a kind this control plane does not act on (logged, not an error)."""
    source = SourceRef(document.path, document.line)
    problems: list[Problem] = []
    data = document.data
    if not isinstance(data, dict):
        return _result(document, None, None, [((), "expected a mapping with apiVersion, kind, metadata, spec")])
    kind, api_version = data.get("kind"), data.get("apiVersion")
    if kind == "Secret" and data.get("type") != DOCKER_CONFIG_JSON_TYPE:
        log.info("%s: skipping Secret of type %r: only %s is used", source, data.get("type"), DOCKER_CONFIG_JSON_TYPE)
        return None
    if kind not in ("WasmPlugin", "Sidecar", "Secret"):
        log.info("%s: skipping %s %s: not a kind this control plane acts on", source, api_version, kind)
        return None
    expected_versions = {"WasmPlugin": WASM_PLUGIN_API_VERSIONS, "Sidecar": SIDECAR_API_VERSIONS}.get(
        kind, SECRET_API_VERSIONS
    )
    if not isinstance(api_version, str) or api_version not in expected_versions:
        problems.append(
            (
                ("apiVersion",),
                f"{api_version!r} is not supported for {kind}; use {' or '.join(sorted(expected_versions))}",
            )
        )
    metadata = data.get("metadata")
    key = None
    if not isinstance(metadata, dict):
        problems.append((("metadata",), "required: a mapping with name (and namespace)"))
    else:
        namespace = metadata.get("namespace") or DEFAULT_NAMESPACE
        name = metadata.get("name")
        if name is None or name == "":
            problems.append((("metadata", "name"), "required"))
        elif not isinstance(name, str):
            problems.append((("metadata", "name"), f"expected a string, got {name!r}"))
        elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            problems.append((("metadata", "name"), f"{name!r} is not a valid name (lowercase DNS subdomain)"))
        if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_LABEL.match(namespace):
            problems.append((("metadata", "namespace"), f"{namespace!r} is not a valid namespace (DNS label)"))
        elif isinstance(name, str) and name:
            key = DocumentKey(kind, namespace, name)
    spec = data.get("spec")
    value: Declared | None = None
    if kind == "Secret":
        if key is not None:
            value, secret_problems = read_pull_secret(data, key.namespace, key.name, source)
            problems.extend(secret_problems)
    elif spec is None:
        problems.append((("spec",), "required"))
    elif key is not None:
        if kind == "WasmPlugin":
            value, spec_problems = _read_wasm_plugin(spec, key, document, source)
        else:
            value, spec_problems = _read_sidecar(spec, key, source)
        problems.extend(spec_problems)
    notes = _target_ref_notes(spec) if kind == "WasmPlugin" else []
    return _result(document, key, None if problems else value, problems, notes)


def _result(
    document: YamlDocument,
    key: DocumentKey | None,
    value: Declared | None,
    problems: list[Problem],
    notes: list[Problem] | None = None,
) -> DocumentResult:
    def located(found: list[Problem]) -> tuple[ConfigError, ...]:
        return tuple(
            ConfigError(document.path, document.line_of(path), format_field_path(path), reason)
            for path, reason in found
        )

    return DocumentResult(key, value, located(problems), SourceRef(document.path, document.line), located(notes or []))


def _target_ref_notes(spec: Any) -> list[Problem]:
    """Istio accepts references to GatewayClasses, Services and ServiceEntries, so such a document stays
    valid; but only a Gateway's proxies can be told apart here (by their gateway-name label), so say that
    the others select nothing rather than let them fail silently."""
    if not isinstance(spec, dict):
        return []
    refs: list[tuple[FieldPath, Any]] = [(("spec", "targetRef"), spec.get("targetRef"))]
    if isinstance(spec.get("targetRefs"), list):
        refs += [(("spec", "targetRefs", i), ref) for i, ref in enumerate(spec["targetRefs"])]
    notes: list[Problem] = []
    for at, ref in refs:
        kind = ref.get("kind") if isinstance(ref, dict) else None
        if isinstance(kind, str) and kind and kind != "Gateway":
            notes.append(
                (at + ("kind",), f"{kind} {ref.get('name')!r} selects no proxy: only Gateway references are acted on")
            )
    return notes


def _read_wasm_plugin(
    data: Any, key: DocumentKey, document: YamlDocument, source: SourceRef
) -> tuple[WasmPlugin | None, list[Problem]]:
    spec, problems = parse_message(data, wasmplugin_pb2.WasmPluginSpec, ("spec",))
    if spec is None:
        return None, problems
    at: FieldPath = ("spec",)

    url_problem = _url_problem(spec.url)
    if url_problem:
        problems.append((at + ("url",), url_problem))
    if spec.sha256 and not _SHA256.match(spec.sha256):
        problems.append((at + ("sha256",), "must be 64 lowercase hex characters"))
    url_digest = spec.url.partition("@sha256:")[2]
    if url_digest and spec.sha256 and url_digest != spec.sha256:
        problems.append((at + ("sha256",), f"does not match the digest in url (sha256:{url_digest})"))

    target_refs = list(spec.targetRefs) + ([spec.targetRef] if spec.HasField("targetRef") else [])
    set_count = sum((spec.HasField("selector"), spec.HasField("targetRef"), len(spec.targetRefs) > 0))
    if set_count > 1:
        problems.append((at, "only one of selector, targetRef and targetRefs may be set"))
    if len(spec.targetRefs) > 16:
        problems.append((at + ("targetRefs",), "at most 16 entries"))
    ref_paths = [at + ("targetRefs", i) for i in range(len(spec.targetRefs))] + [at + ("targetRef",)] * (
        spec.HasField("targetRef")
    )
    for ref, ref_at in zip(target_refs, ref_paths, strict=True):
        if not ref.kind or not ref.name:
            problems.append((ref_at, "kind and name are required"))
        if ref.namespace and ref.namespace != key.namespace:
            problems.append((ref_at + ("namespace",), "cross namespace referencing is not currently supported"))
    if len(spec.image_pull_secret) > 253:
        problems.append((at + ("imagePullSecret",), "at most 253 characters"))
    if len(spec.plugin_name) > 256:
        problems.append((at + ("pluginName",), "at most 256 characters"))

    env_names: set[str] = set()
    if len(spec.vm_config.env) > 256:
        problems.append((at + ("vmConfig", "env"), "at most 256 entries"))
    for index, env in enumerate(spec.vm_config.env):
        env_at = at + ("vmConfig", "env", index)
        if not _C_IDENTIFIER.match(env.name):
            problems.append((env_at + ("name",), f"{env.name!r} is not a C identifier"))
        if env.name in env_names:
            problems.append((env_at + ("name",), f"duplicate variable {env.name!r}"))
        env_names.add(env.name)
        if env.value_from == wasmplugin_pb2.HOST and env.value:
            problems.append((env_at + ("value",), "may only be set when valueFrom is INLINE"))
        if len(env.value) > 2048:
            problems.append((env_at + ("value",), "at most 2048 characters"))

    for index, selector in enumerate(spec.match):
        for port_index, port in enumerate(selector.ports):
            if not 1 <= port.number <= 65535:
                problems.append((at + ("match", index, "ports", port_index, "number"), "must be 1 to 65535"))

    verification_key = ""
    if spec.verification_key:
        try:
            verification_key = canonical_pem(spec.verification_key)
        except InvalidKey as exc:
            problems.append((at + ("verificationKey",), str(exc)))

    url = _resolve_file_url(spec.url, document.path)
    if problems:
        return None, problems
    plugin_config = ""
    if spec.HasField("plugin_config") and spec.plugin_config.fields:
        # From the YAML value rather than the Struct, which would turn every integer into a float (2.0).
        raw = data.get("pluginConfig", data.get("plugin_config"))
        plugin_config = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    return (
        WasmPlugin(
            namespace=key.namespace,
            name=key.name,
            selector=labels_from(spec.selector.match_labels) if spec.HasField("selector") else None,
            target_refs=tuple(TargetRef(r.group, r.kind, r.name, r.namespace or key.namespace) for r in target_refs),
            url=url,
            sha256=spec.sha256,
            image_pull_policy=PullPolicy(wasmplugin_pb2.PullPolicy.Name(spec.image_pull_policy)),
            image_pull_secret=spec.image_pull_secret,
            plugin_config=plugin_config,
            plugin_name=spec.plugin_name,
            phase=Phase(wasmplugin_pb2.PluginPhase.Name(spec.phase)),
            priority=spec.priority.value if spec.HasField("priority") else None,
            fail_strategy=FailStrategy(wasmplugin_pb2.FailStrategy.Name(spec.fail_strategy)),
            env=tuple(EnvVar(e.name, e.value_from == wasmplugin_pb2.HOST, e.value) for e in spec.vm_config.env),
            match=tuple(
                TrafficSelector(
                    WorkloadMode.CLIENT_AND_SERVER
                    if m.mode == wasmplugin_pb2.UNDEFINED
                    else WorkloadMode(wasmplugin_pb2.WorkloadMode.Name(m.mode)),
                    tuple(p.number for p in m.ports),
                )
                for m in spec.match
            ),
            type=PluginType.NETWORK if spec.type == wasmplugin_pb2.NETWORK else PluginType.HTTP,
            source=source,
            image_pull_secret_line=document.line_of(("spec", "imagePullSecret")),
            verification_key=verification_key,
        ),
        [],
    )


def _url_problem(url: str) -> str:
    """What is wrong with the form of a module url, or "": what can be told without the network."""
    if not url:
        return "required"
    if "://" in url and not url.startswith(URL_SCHEMES):
        return f"scheme must be one of {', '.join(s[:-3] for s in URL_SCHEMES)}"
    if url.startswith(("http://", "https://")):
        return "" if urllib.parse.urlsplit(url).hostname else "has no host"
    if url.startswith("file://"):
        return "" if url.removeprefix("file://") else "has no path"
    try:
        parse_reference(url)
    except InvalidReference as exc:
        return f"not an OCI image reference: {exc}"
    return ""


def _resolve_file_url(url: str, document_path: str) -> str:
    """`file://relative/x.wasm` is read relative to the YAML file, so a repository can carry its modules."""
    if not url.startswith("file://"):
        return url
    path = url[len("file://") :]
    if path.startswith("/"):
        return url
    return "file://" + os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(document_path)), path))


def _read_sidecar(data: Any, key: DocumentKey, source: SourceRef) -> tuple[Sidecar | None, list[Problem]]:
    spec, problems = parse_message(data, sidecar_pb2.SidecarSpec, ("spec",))
    if spec is None:
        return None, problems
    ports: list[IngressPort] = []
    seen_ports: set[int] = set()
    for index, ingress in enumerate(spec.ingress):
        at: FieldPath = ("spec", "ingress", index)
        number = ingress.port.number
        if not 1 <= number <= 65535:
            problems.append((at + ("port", "number"), "required, 1 to 65535"))
        elif number in seen_ports:
            problems.append((at + ("port", "number"), f"port {number} is declared twice"))
        seen_ports.add(number)
        endpoint = ingress.default_endpoint
        if not endpoint:
            problems.append((at + ("defaultEndpoint",), "required: where this port's traffic is sent"))
        elif not endpoint.startswith("unix://"):
            match = _HOST_PORT.match(endpoint)
            if match is None or not 1 <= int(match.group(2)) <= 65535:
                problems.append((at + ("defaultEndpoint",), f"{endpoint!r} is not HOST:PORT or unix://PATH"))
        ports.append(IngressPort(number, ingress.port.protocol.upper(), ingress.port.name, ingress.bind, endpoint))
    if problems:
        return None, problems
    selector = labels_from(spec.workload_selector.labels) if spec.HasField("workload_selector") else None
    return Sidecar(key.namespace, key.name, selector, tuple(ports), source), []
