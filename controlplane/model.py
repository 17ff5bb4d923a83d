"""The typed, immutable values every later stage works on: what the config directory declares."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]
"""Labels as sorted (key, value) pairs: hashable, so values holding them can be keys and set members."""


def labels_from(mapping: Mapping[str, str]) -> Labels:
    return tuple(sorted(mapping.items()))


def selector_matches(selector: Labels, labels: Labels) -> bool:
    """A Kubernetes equality selector: every pair of `selector` is among `labels`."""
    return set(selector) <= set(labels)


class Phase(enum.Enum):
    AUTHN = "AUTHN"
    AUTHZ = "AUTHZ"
    STATS = "STATS"
    UNSPECIFIED_PHASE = "UNSPECIFIED_PHASE"


class FailStrategy(enum.Enum):
    FAIL_CLOSE = "FAIL_CLOSE"
    FAIL_OPEN = "FAIL_OPEN"
    FAIL_RELOAD = "FAIL_RELOAD"


class PluginType(enum.Enum):
    HTTP = "HTTP"
    NETWORK = "NETWORK"


class PullPolicy(enum.Enum):
    UNSPECIFIED_POLICY = "UNSPECIFIED_POLICY"
    IF_NOT_PRESENT = "IfNotPresent"
    ALWAYS = "Always"


class WorkloadMode(enum.Enum):
    CLIENT = "CLIENT"
    SERVER = "SERVER"
    CLIENT_AND_SERVER = "CLIENT_AND_SERVER"


@dataclass(frozen=True)
class SourceRef:
    """Where a document was declared: shown in errors, status and logs."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class TargetRef:
    group: str
    kind: str
    name: str
    namespace: str


@dataclass(frozen=True)
class EnvVar:
    name: str
    from_host: bool
    value: str


@dataclass(frozen=True)
class TrafficSelector:
    mode: WorkloadMode
    ports: tuple[int, ...]
    """Empty: every port."""


@dataclass(frozen=True)
class ModuleKey:
    """What identifies a module to fetch: the same key is fetched once and shared by every plugin."""

    url: str
    sha256: str
    pull_secret: str = ""
    """`namespace/name` of the plugin's imagePullSecret: a module fetched with one namespace's credentials
    is never handed to a plugin of another namespace that has none."""
    signers: tuple[tuple[str, ...], ...] = ()
    """PEM public keys (or keyless identities), in groups: the module is served only when, for every group,
    a signature by one of them verifies. Part of the key, so a module checked against one set of keys is never handed to a
    plugin that names others."""


@dataclass(frozen=True)
class WasmPlugin:
    namespace: str
    name: str
    selector: Labels | None
    target_refs: tuple[TargetRef, ...]
    url: str
    """As written, except that a relative `file://` path is made absolute against the document's folder."""
    sha256: str
    image_pull_policy: PullPolicy
    image_pull_secret: str
    plugin_config: str
    """`pluginConfig` as canonical JSON; empty when unset or empty, as Istio then sends no configuration."""
    plugin_name: str
    phase: Phase
    priority: int | None
    fail_strategy: FailStrategy
    env: tuple[EnvVar, ...]
    match: tuple[TrafficSelector, ...]
    type: PluginType
    source: SourceRef
    image_pull_secret_line: int = 0
    """Where `imagePullSecret` is written, for the warning when no such Secret is in the directory."""
    verification_key: str = ""
    """`verificationKey`: a PEM public key that must have signed the module; empty: none."""
    required_keys: tuple[str, ...] = ()
    """Signers the server's signature policy demands for this plugin's namespace (PEM keys, a keyless
    identity), one of which must have signed the module; set by that policy, never by the document."""

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def module(self) -> ModuleKey:
        secret = f"{self.namespace}/{self.image_pull_secret}" if self.image_pull_secret else ""
        signers: tuple[tuple[str, ...], ...] = ((self.verification_key,),) if self.verification_key else ()
        if self.required_keys:
            signers += (self.required_keys,)
        return ModuleKey(self.url, self.sha256, secret, signers)


@dataclass(frozen=True)
class IngressPort:
    number: int
    protocol: str
    name: str
    bind: str
    """Empty: every address, as an Istio inbound listener."""
    default_endpoint: str


@dataclass(frozen=True)
class EgressHost:
    """One `namespace/dnsName` of a Sidecar egress listener's `hosts`."""

    namespace: str
    """`*` any namespace, `.` the Sidecar's own, `~` none, else a namespace's name."""
    host: str
    """`*` every host, `*.suffix` a wildcard, else an exact host name."""


@dataclass(frozen=True)
class EgressPort:
    """A Sidecar `egress` entry: a CLIENT-side listener on `bind:number` that routes to the services named in
    `hosts`."""

    number: int
    """0: Istio's catch-all for captured traffic, which makes no listener here; its hosts still count."""
    protocol: str
    name: str
    bind: str
    hosts: tuple[EgressHost, ...]


@dataclass(frozen=True)
class Sidecar:
    namespace: str
    name: str
    workload_labels: Labels | None
    """None: the namespace-wide Sidecar."""
    ingress: tuple[IngressPort, ...]
    source: SourceRef
    egress: tuple[EgressPort, ...] = ()


class Resolution(enum.Enum):
    NONE = "NONE"
    STATIC = "STATIC"
    DNS = "DNS"
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"


@dataclass(frozen=True)
class ServicePort:
    number: int
    protocol: str
    name: str
    target_port: int
    """0: the port's own number."""


@dataclass(frozen=True)
class ServiceEndpoint:
    address: str
    """An IP, a host name (DNS resolution) or `unix://PATH`."""
    ports: tuple[tuple[str, int], ...]
    """Service port name → the port this endpoint serves it on."""


@dataclass(frozen=True)
class ServiceEntry:
    """A service the mesh does not run: each host and port becomes a cluster named as Istio names it,
    `outbound|PORT||HOST`, that listeners route to and plugins call."""

    namespace: str
    name: str
    hosts: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    resolution: Resolution
    endpoints: tuple[ServiceEndpoint, ...]
    export_to: tuple[str, ...]
    """Empty: every namespace, as Istio's default."""
    source: SourceRef

    def visible_from(self, namespace: str) -> bool:
        if not self.export_to or "*" in self.export_to:
            return True  # `~` (exported nowhere) falls through: it names no namespace
        return namespace in self.export_to or ("." in self.export_to and namespace == self.namespace)


@dataclass(frozen=True)
class RegistryCredential:
    """A user name and password for one registry host, from a Docker config or a pull Secret."""

    registry: str
    """`host[:port]`, as images name it."""
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class PullSecret:
    """A `kubernetes.io/dockerconfigjson` Secret that plugins of its namespace name as imagePullSecret."""

    namespace: str
    name: str
    credentials: tuple[RegistryCredential, ...] = field(repr=False)
    source: SourceRef


@dataclass(frozen=True)
class Config:
    """Everything the directory declares that is valid, in a stable order."""

    plugins: tuple[WasmPlugin, ...] = ()
    sidecars: tuple[Sidecar, ...] = ()
    secrets: tuple[PullSecret, ...] = ()
    service_entries: tuple[ServiceEntry, ...] = ()


@dataclass(frozen=True)
class ProxyClass:
    """What decides a proxy's resources: proxies of one class get the same bytes."""

    namespace: str
    labels: Labels
    standalone_ecds: bool = False
    """Connected to the extension-config service alone: its listeners are its own, so a plugin that goes
    away must get a pass-through config, as the listener keeps naming it."""
    gateway: bool = False
    """A gateway (Istio's `router` proxies): every listener of it is CLIENT-side."""

    def __str__(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in self.labels)
        return (
            f"{self.namespace}/{{{labels}}}"
            + (" (gateway)" if self.gateway else "")
            + (" (ECDS only)" if self.standalone_ecds else "")
        )


@dataclass(frozen=True)
class ModuleReady:
    """The module verified and held in the cache under its sha256."""

    sha256: str
    size: int


@dataclass(frozen=True)
class ModuleFailed:
    reason: str


ModuleStatus = ModuleReady | ModuleFailed
"""A module not in a status map is still being fetched."""
