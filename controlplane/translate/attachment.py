"""Why a plugin runs where it runs, and why it does not run elsewhere: per plugin, the proxy classes and
listeners it attaches to and, for each one it skips, the rule that left it out (namespace, selector,
targetRef, match mode, port). Pure: `render`, `validate` and the status view share it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controlplane.errors import ConfigError
from controlplane.model import Config, ProxyClass, WasmPlugin, labels_from
from controlplane.translate.resources import ListenerPlan, listener_plans
from controlplane.translate.selection import (
    GATEWAY_NAME_LABEL,
    select_sidecar,
    visible_services,
    why_not_on_listener,
    why_not_selected,
)


def attachment_report(config: Config, proxies: Iterable[ProxyClass], root_namespace: str) -> list[dict[str, Any]]:
    """Per plugin: `attached` (proxy class and listener) and `skipped` (proxy class, listener when the
    proxy was selected, and the reason)."""
    proxies = sorted(set(proxies), key=str)
    plans = {proxy: _plans(config, proxy, root_namespace) for proxy in proxies}
    report = []
    for plugin in config.plugins:
        attached: list[dict[str, str]] = []
        skipped: list[dict[str, str]] = []
        for proxy in proxies:
            reason = why_not_selected(plugin, proxy, root_namespace)
            if reason:
                skipped.append({"proxy": str(proxy), "reason": reason})
                continue
            if not plans[proxy]:
                # Still sent: a proxy with listeners of its own names the plugins it wants.
                skipped.append({"proxy": str(proxy), "reason": "no Sidecar gives this proxy a listener"})
            for plan in plans[proxy]:
                reason = why_not_on_listener(plugin, plan.info)
                where = {"proxy": str(proxy), "listener": plan.info.name}
                if reason:
                    skipped.append({**where, "reason": reason})
                else:
                    attached.append(where)
        report.append(
            {
                "plugin": f"{plugin.namespace}/{plugin.name}",
                "source": str(plugin.source),
                "attached": attached,
                "skipped": skipped,
            }
        )
    return report


def _plans(config: Config, proxy: ProxyClass, root_namespace: str) -> list[ListenerPlan]:
    sidecar = select_sidecar(config, proxy, root_namespace)
    return listener_plans(sidecar, proxy, visible_services(config, proxy, sidecar))


def unattachable_plugins(config: Config, root_namespace: str) -> list[ConfigError]:
    """Warnings for plugins that can attach to no listener any Sidecar of the directory makes, judged for
    the proxies those Sidecars (and the plugins' own selectors and targetRefs) describe. Nothing is said
    when the directory has no Sidecar: its proxies then bring their own listeners."""
    if not config.sidecars:
        return []
    warnings = []
    for plugin in config.plugins:
        candidates = _candidate_proxies(config, plugin, root_namespace)
        alone = Config(plugins=(plugin,), sidecars=config.sidecars, service_entries=config.service_entries)
        (entry,) = attachment_report(alone, candidates, root_namespace)
        if entry["attached"]:
            continue
        reasons = sorted({s["reason"] for s in entry["skipped"]})
        warnings.append(
            ConfigError(
                plugin.source.path,
                plugin.source.line,
                "spec",
                "attaches to no listener of this directory's Sidecars: " + "; ".join(reasons),
            )
        )
    return warnings


def _candidate_proxies(config: Config, plugin: WasmPlugin, root_namespace: str) -> list[ProxyClass]:
    """Proxies the plugin could be meant for: in its namespace (every namespace with a Sidecar, for a root
    namespace plugin), with the labels of its selector, of a Sidecar's workloadSelector, or of its target
    gateway (then as a gateway)."""
    namespaces = {plugin.namespace}
    if plugin.namespace == root_namespace:
        namespaces |= {s.namespace for s in config.sidecars}
    label_sets = [dict(plugin.selector or ())]
    label_sets += [{GATEWAY_NAME_LABEL: ref.name} for ref in plugin.target_refs]
    for sidecar in config.sidecars:
        if sidecar.workload_labels is not None:
            label_sets.append(dict(sidecar.workload_labels) | dict(plugin.selector or ()))
    return [
        ProxyClass(namespace, labels_from(labels), gateway=GATEWAY_NAME_LABEL in labels)
        for namespace in sorted(namespaces)
        for labels in label_sets
    ]
