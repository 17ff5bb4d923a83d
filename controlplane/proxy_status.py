"""`controlplane status`: the proxies connected to a control plane and whether each holds what it was
sent, per type, as `istioctl proxy-status` prints it. Pure: the admin port's `/debug/proxies` in, text out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from controlplane.admin import NACKED, TYPE_NAMES

COLUMNS = ("NAME", "NAMESPACE", "LABELS", "PROTOCOL", *TYPE_NAMES.values())


def any_nacked(proxies: Sequence[dict[str, Any]]) -> bool:
    return any(state == NACKED for proxy in proxies for state in proxy["sync"].values())


def status_table(proxies: Sequence[dict[str, Any]]) -> str:
    """A row per proxy, then Envoy's message for each NACK."""
    ordered = sorted(proxies, key=lambda p: (p.get("namespace", ""), p["node"], p["protocol"]))
    rows = [COLUMNS] + [
        (
            proxy["node"],
            proxy.get("namespace", ""),
            ",".join(f"{k}={v}" for k, v in sorted(proxy.get("labels", {}).items())) or "-",
            proxy["protocol"].upper() if proxy["protocol"] == "sotw" else proxy["protocol"].capitalize(),
            *(proxy["sync"][name] for name in TYPE_NAMES.values()),
        )
        for proxy in ordered
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    for proxy in ordered:
        for type_url, name in TYPE_NAMES.items():
            if proxy["sync"][name] == NACKED:
                error = proxy["types"][type_url]["error"]
                lines.append(f"{proxy['node']} {name} NACKED: {' '.join(error.split())}")
    return "\n".join(lines) + "\n"
