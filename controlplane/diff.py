"""What a change to the config directory does to each kind of proxy: which plugins it gains, loses or
changes, and how the filter order of each listener moves. What a reviewer wants to see on a pull request.

Pure over two `Config`s (only `compare_in_checkout` reads local module files): modules are not fetched,
plugins are compared by what they declare (url, sha256, pluginConfig and the rest). A `file://` module inside the directory is compared by its path relative to
the directory and by the digest of its content, which the caller supplies."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from controlplane.model import Config, Labels, ProxyClass, WasmPlugin
from controlplane.translate.resources import TranslateSettings, ecds_name, translate
from controlplane.translate.selection import GATEWAY_NAME_LABEL, select_plugins, select_sidecar

_IGNORED_FIELDS = frozenset({"source", "namespace", "name"})


@dataclass(frozen=True)
class ClassDiff:
    proxy: ProxyClass
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[tuple[str, tuple[str, ...]], ...]
    """(plugin, the fields that changed)."""
    sidecar: tuple[str, str]
    """The Sidecar that gives the listeners, before and after ("" for none)."""
    listeners: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
    """(listener, filters before, filters after), for listeners whose filters changed."""

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.listeners) and self.sidecar[0] == self.sidecar[1]


def proxy_classes(configs: list[Config], root_namespace: str) -> list[ProxyClass]:
    """The namespace-and-labels combinations the directories speak of: every namespace with no labels, every
    Sidecar's and plugin's selector, a gateway's label, and each Sidecar selector joined with each plugin
    selector of its namespace that can match the same workload."""
    namespaces: set[str] = set()
    selectors: dict[str, set[Labels]] = {}
    sidecar_selectors: dict[str, set[Labels]] = {}
    root_selectors: set[Labels] = set()
    for config in configs:
        for sidecar in config.sidecars:
            namespaces.add(sidecar.namespace)
            if sidecar.workload_labels is not None:
                sidecar_selectors.setdefault(sidecar.namespace, set()).add(sidecar.workload_labels)
        for plugin in config.plugins:
            namespaces.add(plugin.namespace)
            labels = [plugin.selector] if plugin.selector else []
            labels += [((GATEWAY_NAME_LABEL, r.name),) for r in plugin.target_refs if r.kind == "Gateway"]
            for label_set in labels:
                selectors.setdefault(plugin.namespace, set()).add(label_set)
                if plugin.namespace == root_namespace:
                    root_selectors.add(label_set)
    classes: set[ProxyClass] = set()
    for namespace in namespaces:
        plugin_side = selectors.get(namespace, set()) | root_selectors
        workload_side = sidecar_selectors.get(namespace, set())
        candidates: set[Labels] = {(), *plugin_side, *workload_side}
        for workload, wanted in itertools.product(workload_side, plugin_side):
            joined = dict(workload)
            if all(joined.get(k, v) == v for k, v in wanted):
                candidates.add(tuple(sorted({**joined, **dict(wanted)}.items())))
        # A class labelled with a gateway name is that gateway: its listeners are CLIENT-side.
        classes.update(
            ProxyClass(namespace, labels, gateway=GATEWAY_NAME_LABEL in dict(labels)) for labels in candidates
        )
    return sorted(classes, key=lambda c: (c.namespace, c.labels))


Comparable = Callable[[WasmPlugin], Mapping[str, Any]]


def as_declared(plugin: WasmPlugin) -> Mapping[str, Any]:
    return plugin_fields(plugin, plugin.url, "")


def diff_configs(
    old: Config,
    new: Config,
    root_namespace: str,
    old_fields: Comparable = as_declared,
    new_fields: Comparable = as_declared,
) -> list[ClassDiff]:
    """Per proxy class, what changes; `old_fields` and `new_fields` give the fields of a plugin to compare."""
    result = []
    for proxy in proxy_classes([old, new], root_namespace):
        before = {ecds_name(p): p for p in select_plugins(old, proxy, root_namespace)}
        after = {ecds_name(p): p for p in select_plugins(new, proxy, root_namespace)}
        changed = []
        for name in sorted(before.keys() & after.keys()):
            was, now = old_fields(before[name]), new_fields(after[name])
            fields = tuple(k for k in sorted(was.keys() | now.keys()) if was.get(k) != now.get(k))
            if fields:
                changed.append((name, fields))
        old_sidecar, new_sidecar = (
            select_sidecar(old, proxy, root_namespace),
            select_sidecar(new, proxy, root_namespace),
        )
        old_listeners = _listener_filters(old, proxy, root_namespace)
        new_listeners = _listener_filters(new, proxy, root_namespace)
        listeners = tuple(
            (listener, old_listeners.get(listener, ()), new_listeners.get(listener, ()))
            for listener in sorted(old_listeners.keys() | new_listeners.keys())
            if old_listeners.get(listener) != new_listeners.get(listener)
        )
        diff = ClassDiff(
            proxy,
            added=tuple(sorted(after.keys() - before.keys())),
            removed=tuple(sorted(before.keys() - after.keys())),
            changed=tuple(changed),
            sidecar=(_name(old_sidecar), _name(new_sidecar)),
            listeners=listeners,
        )
        if not diff.empty:
            result.append(diff)
    return result


def plugin_fields(plugin: WasmPlugin, url: str, module_digest: str) -> dict[str, Any]:
    """What a reviewer compares: the declared fields, with the url as the caller wants it shown and the
    digest of a local module's content."""
    fields = {
        _spec_name(f.name): getattr(plugin, f.name) for f in dataclasses.fields(plugin) if f.name not in _IGNORED_FIELDS
    }
    fields["url"] = url
    if module_digest:
        fields["module content"] = module_digest
    return fields


def _spec_name(field_name: str) -> str:
    """The name the YAML spells: `plugin_config` is `pluginConfig`."""
    head, *rest = field_name.split("_")
    return head + "".join(part.title() for part in rest)


def _listener_filters(config: Config, proxy: ProxyClass, root_namespace: str) -> dict[str, tuple[str, ...]]:
    """Per listener, its filter names in order, from the same translation the server sends."""
    resources = translate(config, proxy, {}, TranslateSettings(root_namespace=root_namespace))
    result = {}
    for listener in resources.listeners:
        names: list[str] = []
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                    manager = hcm_pb2.HttpConnectionManager()
                    network_filter.typed_config.Unpack(manager)
                    names += [f.name for f in manager.http_filters]
                else:
                    names.append(network_filter.name)
        result[listener.name] = tuple(names)
    return result


def _name(sidecar: Any) -> str:
    return f"{sidecar.namespace}/{sidecar.name}" if sidecar is not None else ""


def render_text(diffs: list[ClassDiff]) -> str:
    if not diffs:
        return "no proxy class changes\n"
    lines = []
    for diff in diffs:
        lines.append(f"proxy class {diff.proxy}")
        if diff.sidecar[0] != diff.sidecar[1]:
            lines.append(f"  sidecar: {diff.sidecar[0] or '(none)'} -> {diff.sidecar[1] or '(none)'}")
        lines += [f"  + {name}" for name in diff.added]
        lines += [f"  - {name}" for name in diff.removed]
        lines += [f"  ~ {name}: {', '.join(fields)}" for name, fields in diff.changed]
        for listener, before, after in diff.listeners:
            lines.append(f"  filters of listener {listener}:")
            lines.append(f"    before: {', '.join(before) or '(none)'}")
            lines.append(f"    after:  {', '.join(after) or '(none)'}")
    return "\n".join(lines) + "\n"


def render_json(diffs: list[ClassDiff]) -> list[dict[str, Any]]:
    return [
        {
            "namespace": d.proxy.namespace,
            "labels": dict(d.proxy.labels),
            "added": list(d.added),
            "removed": list(d.removed),
            "changed": [{"plugin": name, "fields": list(fields)} for name, fields in d.changed],
            "sidecar": {"before": d.sidecar[0], "after": d.sidecar[1]},
            "listeners": [{"listener": name, "before": list(b), "after": list(a)} for name, b, a in d.listeners],
        }
        for d in diffs
    ]


def compare_in_checkout(root: str) -> Comparable:
    """Plugin fields for comparing two checkouts: a `file://` module inside `root` is named relative to it
    (the same file in two checkouts is the same module) and stands for the digest of its content, which
    can change while the url does not. Reads local files only."""
    root = os.path.realpath(root)

    def fields(plugin: WasmPlugin) -> Mapping[str, Any]:
        url, digest = plugin.url, ""
        if url.startswith("file://"):
            path = os.path.realpath(url[len("file://") :])
            if os.path.commonpath([path, root]) == root:
                url = "file://" + os.path.relpath(path, root)
            digest = _file_digest(path)
        return plugin_fields(plugin, url, digest)

    return fields


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return digest.hexdigest()
