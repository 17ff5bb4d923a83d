"""Turns one YAML document into a model value, checking what Istio's schema and admission would."""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from controlplane.addresses import InvalidAddress, is_ip, parse_host_port
from controlplane.api import serviceentry_pb2, sidecar_pb2, wasmplugin_pb2
from controlplane.errors import ConfigError
from controlplane.image_reference import InvalidReference, parse_reference
from controlplane.model import (
    EgressHost,
    EgressPort,
    EnvVar,
    FailStrategy,
    IngressPort,
    Phase,
    PluginType,
    PullPolicy,
    PullSecret,
    Resolution,
    ServiceEndpoint,
    ServiceEntry,
    ServicePort,
    Sidecar,
    SourceRef,
    TargetRef,
    TrafficSelector,
    WasmPlugin,
    WorkloadMode,
    labels_from,
)
from controlplane.source.go_json import struct_json
from controlplane.source.schema import Problem, parse_message
from controlplane.source.secrets import DOCKER_CONFIG_JSON_TYPE, SECRET_API_VERSIONS, read_pull_secret
from controlplane.source.yaml_documents import FieldPath, YamlDocument, format_field_path
from controlplane.verification_keys import InvalidKey, canonical_pem

log = logging.getLogger(__name__)

WASM_PLUGIN_API_VERSIONS = frozenset({"extensions.istio.io/v1alpha1"})
SIDECAR_API_VERSIONS = frozenset(
    {"networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"}
)
SERVICE_ENTRY_API_VERSIONS = SIDECAR_API_VERSIONS
DEFAULT_NAMESPACE = "default"
"""Of a document without metadata.namespace (as `kubectl apply`) and of a proxy without NAMESPACE."""
URL_SCHEMES = ("oci://", "file://", "http://", "https://")

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SHA256 = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class DocumentKey:
    """Two documents with the same key declare the same object."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


Declared = WasmPlugin | Sidecar | ServiceEntry | PullSecret


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
    if kind not in ("WasmPlugin", "Sidecar", "ServiceEntry", "Secret"):
        log.info("%s: skipping %s %s: not a kind this control plane acts on", source, api_version, kind)
        return None
    expected_versions = {
        "WasmPlugin": WASM_PLUGIN_API_VERSIONS,
        "Sidecar": SIDECAR_API_VERSIONS,
        "ServiceEntry": SERVICE_ENTRY_API_VERSIONS,
    }.get(kind, SECRET_API_VERSIONS)
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
        elif kind == "ServiceEntry":
            value, spec_problems = _read_service_entry(spec, key, source)
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
    notes: list[Problem] = []
    selector = spec.get("selector")
    if isinstance(selector, dict) and not selector.get("matchLabels"):
        # Istio's validateWorkloadSelector warns too: a selector without labels selects every workload.
        notes.append((("spec", "selector"), "workload selector specified without labels: selects every proxy"))
    refs: list[tuple[FieldPath, Any]] = [(("spec", "targetRef"), spec.get("targetRef"))]
    if isinstance(spec.get("targetRefs"), list):
        refs += [(("spec", "targetRefs", i), ref) for i, ref in enumerate(spec["targetRefs"])]
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
        problems.extend(_target_ref_problems(ref, ref_at))
    if spec.HasField("selector"):
        problems.extend(_selector_problems(spec.selector.match_labels, at + ("selector", "matchLabels")))
    # The CRD's minLength: 1 refuses an empty string that is written out, while leaving the field out is fine.
    for field_name in ("pluginName", "imagePullSecret"):
        if data.get(field_name) == "":
            problems.append((at + (field_name,), "must not be empty; leave the field out instead"))
    if len(spec.image_pull_secret) > 253:
        problems.append((at + ("imagePullSecret",), "at most 253 characters"))
    if len(spec.plugin_name) > 256:
        problems.append((at + ("pluginName",), "at most 256 characters"))

    env_names: set[str] = set()
    if len(spec.vm_config.env) > 256:
        problems.append((at + ("vmConfig", "env"), "at most 256 entries"))
    for index, env in enumerate(spec.vm_config.env):
        env_at = at + ("vmConfig", "env", index)
        # Any name of 1 to 256 characters, as Istio's CRD allows: Envoy hands the VM names as they are.
        if not 1 <= len(env.name) <= 256:
            problems.append((env_at + ("name",), "required, 1 to 256 characters"))
        if env.name in env_names:
            problems.append((env_at + ("name",), f"duplicate variable {env.name!r}"))
        env_names.add(env.name)
        if env.value_from == wasmplugin_pb2.HOST and env.value:
            problems.append((env_at + ("value",), "may only be set when valueFrom is INLINE"))
        if len(env.value) > 2048:
            problems.append((env_at + ("value",), "at most 2048 characters"))

    for index, selector in enumerate(spec.match):
        seen_ports: set[int] = set()
        for port_index, port in enumerate(selector.ports):
            port_at = at + ("match", index, "ports", port_index, "number")
            if not 1 <= port.number <= 65535:
                problems.append((port_at, "must be 1 to 65535"))
            elif port.number in seen_ports:
                # The CRD keys this list by number (x-kubernetes-list-type: map).
                problems.append((port_at, f"port {port.number} is listed twice"))
            seen_ports.add(port.number)

    verification_key = ""
    if spec.verification_key:
        try:
            verification_key = canonical_pem(spec.verification_key)
        except InvalidKey as exc:
            problems.append((at + ("verificationKey",), str(exc)))

    url = _resolve_file_url(_lower_scheme(spec.url), document.path)
    if problems:
        return None, problems
    plugin_config = ""
    if spec.HasField("plugin_config") and spec.plugin_config.fields:
        # As Istio writes the Struct: every number a float64 printed by Go's encoding/json (`2.0` is `2`).
        plugin_config = struct_json(data["pluginConfig"])
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


GATEWAY_API_GROUP = "gateway.networking.k8s.io"
TARGET_REF_KINDS = (
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    (GATEWAY_API_GROUP, "Gateway"),
    (GATEWAY_API_GROUP, "GatewayClass"),
)
"""(group, kind) a targetRef may name: Istio's allowedTargetRefs (pkg/config/validation/validation.go); the
core group is written "" or "core"."""
_TARGET_GROUP = re.compile(r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TARGET_KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")


def canonical_group(group: str) -> str:
    return group or "core"


def _target_ref_problems(ref: Any, at: FieldPath) -> list[Problem]:
    """Istio's CRD (kind and name required, their patterns, no namespace) and validatePolicyTargetReference."""
    problems: list[Problem] = []
    if not ref.kind or not ref.name:
        problems.append((at, "kind and name are required"))
    if len(ref.name) > 253:
        problems.append((at + ("name",), "at most 253 characters"))
    if ref.kind and (len(ref.kind) > 63 or not _TARGET_KIND.match(ref.kind)):
        problems.append((at + ("kind",), f"{ref.kind!r} is not a kind name"))
    if len(ref.group) > 253 or not _TARGET_GROUP.match(ref.group):
        problems.append((at + ("group",), f"{ref.group!r} is not an API group"))
    elif ref.kind and (canonical_group(ref.group), ref.kind) not in TARGET_REF_KINDS:
        allowed = ", ".join(f"{g}/{k}" for g, k in TARGET_REF_KINDS)
        problems.append((at, f"targetRef must be to one of {allowed}, but was {ref.group or 'core'}/{ref.kind}"))
    if ref.namespace:
        problems.append((at + ("namespace",), "cross namespace referencing is not currently supported"))
    return problems


def _selector_problems(labels: Any, at: FieldPath) -> list[Problem]:
    """Istio's CRD (no `*`, no empty key, values of at most 63 characters) and validateWorkloadSelector."""
    problems: list[Problem] = []
    for key, value in labels.items():
        if not key:
            problems.append((at, "key must not be empty"))
        elif "*" in key:
            problems.append((at + (key,), "wildcard not allowed in label key match"))
        if "*" in value:
            problems.append((at + (key,), "wildcard not allowed in label value match"))
        if len(value) > 63:
            problems.append((at + (key,), "at most 63 characters"))
    return problems


def _scheme(url: str) -> str:
    """The scheme of a url, lower-cased (as Go's url.Parse, which Istio uses, reads it), or ""."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", head) else ""


def _lower_scheme(url: str) -> str:
    scheme = _scheme(url)
    return scheme + url[len(scheme) :] if scheme else url


def _url_problem(url: str) -> str:
    """What is wrong with the form of a module url, or "": what can be told without the network."""
    if not url:
        return "required"
    if "://" in url and _scheme(url) + "://" not in URL_SCHEMES:
        return f"scheme must be one of {', '.join(s[:-3] for s in URL_SCHEMES)}"
    url = _lower_scheme(url)
    if url.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(url)
        try:
            _ = parts.port
        except ValueError:  # its message quotes the port, which may be part of a password
            return "has a port that is not a number (a `/`, `?` or `#` in a login must be escaped: %2F, %3F, %23)"
        return "" if parts.hostname else "has no host"
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
            try:
                parse_host_port(endpoint)
            except InvalidAddress:
                problems.append((at + ("defaultEndpoint",), f"{endpoint!r} is not HOST:PORT or unix://PATH"))
        ports.append(IngressPort(number, ingress.port.protocol.upper(), ingress.port.name, ingress.bind, endpoint))
    egress: list[EgressPort] = []
    for index, listener in enumerate(spec.egress):
        at = ("spec", "egress", index)
        number = listener.port.number
        # Without a port, Istio's catch-all for captured traffic: no listener here (nothing is captured), but
        # its hosts still say which services the proxy gets clusters for.
        if number > 65535:
            problems.append((at + ("port", "number"), "must be 1 to 65535"))
        elif number in seen_ports:
            problems.append((at + ("port", "number"), f"port {number} is declared twice"))
        if number:
            seen_ports.add(number)
        bind = listener.bind or "127.0.0.1"
        if not is_ip(bind):
            problems.append((at + ("bind",), f"{bind!r} is not an IP address"))
        if not listener.hosts:
            problems.append((at + ("hosts",), "required: the services this listener routes to, as namespace/host"))
        hosts: list[EgressHost] = []
        for host_index, text in enumerate(listener.hosts):
            host, problem = _egress_host(text)
            if problem:
                problems.append((at + ("hosts", host_index), problem))
            elif host is not None:
                hosts.append(host)
        egress.append(EgressPort(number, listener.port.protocol.upper(), listener.port.name, bind, tuple(hosts)))
    if problems:
        return None, problems
    selector = labels_from(spec.workload_selector.labels) if spec.HasField("workload_selector") else None
    return Sidecar(key.namespace, key.name, selector, tuple(ports), source, tuple(egress)), []


def _egress_host(text: str) -> tuple[EgressHost | None, str]:
    """`namespace/dnsName` as Istio's validateNamespaceSlashWildcardHostname reads it."""
    namespace, sep, host = text.partition("/")
    if not sep or not namespace or not host:
        return None, f"{text!r} is not namespace/host (e.g. ./api.example.com or */*)"
    if namespace not in ("*", ".", "~") and not _DNS_LABEL.match(namespace):
        return None, f"{namespace!r} is not a namespace, *, . or ~"
    if host != "*" and not _DNS_SUBDOMAIN.match(host.removeprefix("*.").lower()):
        return None, f"{host!r} is not a host name, *.suffix or *"
    return EgressHost(namespace, host), ""


_RESOLUTIONS = {
    serviceentry_pb2.ServiceEntrySpec.NONE: Resolution.NONE,
    serviceentry_pb2.ServiceEntrySpec.STATIC: Resolution.STATIC,
    serviceentry_pb2.ServiceEntrySpec.DNS: Resolution.DNS,
    serviceentry_pb2.ServiceEntrySpec.DNS_ROUND_ROBIN: Resolution.DNS_ROUND_ROBIN,
}


def _read_service_entry(data: Any, key: DocumentKey, source: SourceRef) -> tuple[ServiceEntry | None, list[Problem]]:
    """The checks of Istio's ValidateServiceEntry (pkg/config/validation/validation.go) that decide whether
    clusters can be built."""
    spec, problems = parse_message(data, serviceentry_pb2.ServiceEntrySpec, ("spec",))
    if spec is None:
        return None, problems
    at: FieldPath = ("spec",)
    if not spec.hosts:
        problems.append((at + ("hosts",), "service entry must have at least one host"))
    for index, host in enumerate(spec.hosts):
        if host == "*" or not _DNS_SUBDOMAIN.match(host.removeprefix("*.").lower()):
            problems.append((at + ("hosts", index), f"invalid host {host!r}"))
    if not spec.ports:
        problems.append((at + ("ports",), "required: the ports the service is reached on"))
    names: set[str] = set()
    numbers: set[int] = set()
    for index, port in enumerate(spec.ports):
        port_at = at + ("ports", index)
        if not 1 <= port.number <= 65535:
            problems.append((port_at + ("number",), "required, 1 to 65535"))
        elif port.number in numbers:
            problems.append((port_at + ("number",), f"service entry port {port.number} already defined"))
        if port.name in names:
            problems.append((port_at + ("name",), f"service entry port name {port.name!r} already defined"))
        if port.target_port and not 1 <= port.target_port <= 65535:
            problems.append((port_at + ("targetPort",), "must be 1 to 65535"))
        names.add(port.name)
        numbers.add(port.number)
    resolution = _RESOLUTIONS.get(spec.resolution)
    if resolution is None:
        problems.append((at + ("resolution",), "DYNAMIC_DNS is for ztunnel and waypoints; use DNS or STATIC"))
    if resolution is Resolution.NONE and spec.endpoints:
        problems.append((at + ("endpoints",), "no endpoints should be provided for resolution type NONE"))
    if resolution is Resolution.DNS_ROUND_ROBIN and len(spec.endpoints) > 1:
        problems.append((at + ("endpoints",), "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN"))
    if resolution is Resolution.STATIC and not spec.endpoints:
        problems.append((at + ("endpoints",), "required for resolution STATIC: the addresses to send traffic to"))
    if resolution in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN) and not spec.endpoints:
        for index, host in enumerate(spec.hosts):
            if host.startswith("*"):
                problems.append(
                    (at + ("hosts", index), f"a wildcard host needs endpoints for resolution {resolution.value}")
                )
    endpoints: list[ServiceEndpoint] = []
    for index, endpoint in enumerate(spec.endpoints):
        endpoint_at = at + ("endpoints", index)
        address = endpoint.address
        if resolution is Resolution.STATIC and not (is_ip(address) or address.startswith("unix://")):
            problems.append((endpoint_at + ("address",), f"{address!r} is not an IP address or unix:// path"))
        elif not (is_ip(address) or address.startswith("unix://") or _DNS_SUBDOMAIN.match(address.lower())):
            problems.append(
                (endpoint_at + ("address",), f"endpoint address {address!r} is not a valid FQDN or an IP address")
            )
        for name, number in endpoint.ports.items():
            if name not in names:
                problems.append(
                    (endpoint_at + ("ports", name), f"endpoint port {name!r} is not defined by the service entry")
                )
            if not 1 <= number <= 65535:
                problems.append((endpoint_at + ("ports", name), "must be 1 to 65535"))
        endpoints.append(ServiceEndpoint(address, tuple(sorted(endpoint.ports.items()))))
    if spec.HasField("workload_selector"):
        problems.append((at + ("workloadSelector",), "not supported: name the endpoints"))
    for index, target in enumerate(spec.export_to):
        # Istio's validateExportTo: `.`, `*`, `~` (alone) or a namespace.
        if target not in (".", "*", "~") and not _DNS_LABEL.match(target):
            problems.append((at + ("exportTo", index), f"{target!r} is not ., *, ~ or a namespace"))
    if "~" in spec.export_to and len(spec.export_to) > 1:
        problems.append((at + ("exportTo",), "~ (no namespace) cannot be combined with others"))
    if problems or resolution is None:
        return None, problems
    return (
        ServiceEntry(
            namespace=key.namespace,
            name=key.name,
            hosts=tuple(spec.hosts),
            ports=tuple(ServicePort(p.number, p.protocol.upper(), p.name, p.target_port) for p in spec.ports),
            resolution=resolution,
            endpoints=tuple(endpoints),
            export_to=tuple(spec.export_to),
            source=source,
        ),
        [],
    )
