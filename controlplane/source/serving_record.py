"""Which file serves each document, kept across restarts, so that of two files declaring the same document
a restarted server keeps serving the one it served before rather than switching to the other."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping

from controlplane.files import write_atomically
from controlplane.source.directory import Served
from controlplane.source.documents import DocumentKey

log = logging.getLogger(__name__)

RECORD_NAME = "serving.json"


def read_record(cache_dir: str) -> dict[DocumentKey, str]:
    """An unreadable or malformed record is only a lost preference: the path that sorts first serves."""
    try:
        with open(os.path.join(cache_dir, RECORD_NAME), encoding="utf-8") as handle:
            entries = json.load(handle)
        return {DocumentKey(e["kind"], e["namespace"], e["name"]): e["path"] for e in entries}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("%s: ignored: %s", os.path.join(cache_dir, RECORD_NAME), exc)
        return {}


def record_of(served: Mapping[DocumentKey, Served]) -> dict[DocumentKey, str]:
    return {key: chosen.path for key, chosen in served.items()}


def write_record(cache_dir: str, record: Mapping[DocumentKey, str]) -> None:
    """Replaced whole, so that a crash leaves the old record or the new one, never half."""
    entries = [
        {"kind": k.kind, "namespace": k.namespace, "name": k.name, "path": path}
        for k, path in sorted(record.items(), key=lambda item: (item[0].kind, item[0].namespace, item[0].name))
    ]
    os.makedirs(cache_dir, exist_ok=True)
    write_atomically(os.path.join(cache_dir, RECORD_NAME), json.dumps(entries, indent=1).encode(), 0o600)
