"""Per file, what is applied and what failed and why: the admin view of a loaded directory. Pure."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import ConfigError
from controlplane.source.directory import FileState, LoadedDirectory, Served
from controlplane.source.documents import DocumentKey


@dataclass
class _ByPath:
    """What the directory as a whole says about each file, gathered once: looking it up per file would make
    the view quadratic in the number of files."""

    stale: defaultdict[str, list[tuple[DocumentKey, Served]]] = field(default_factory=lambda: defaultdict(list))
    errors: defaultdict[str, list[ConfigError]] = field(default_factory=lambda: defaultdict(list))
    warnings: defaultdict[str, list[ConfigError]] = field(default_factory=lambda: defaultdict(list))


def file_status(loaded: LoadedDirectory) -> dict[str, dict[str, Any]]:
    by_path = _ByPath()
    for key, served in loaded.served.items():
        if served.stale:
            by_path.stale[served.path].append((key, served))
    for error in loaded.errors:
        by_path.errors[error.path].append(error)
    for warning in loaded.warnings:
        by_path.warnings[warning.path].append(warning)
    return {path: _one_file(loaded, state, by_path) for path, state in loaded.files.items()}


def _one_file(loaded: LoadedDirectory, state: FileState, by_path: _ByPath) -> dict[str, Any]:
    documents = []
    keys_here: set[DocumentKey] = set()
    for document in state.documents:
        entry: dict[str, Any] = {"line": document.source.line}
        if document.key is not None:
            keys_here.add(document.key)
            entry |= _key(document.key)
        served = loaded.served.get(document.key) if document.key is not None else None
        if served is None:
            entry["state"] = "failed, not applied"
        elif served.path != state.path:
            entry["state"] = f"not applied: {served.value.source} is served"
        elif served.stale:
            entry["state"] = f"failed, serving the last good version ({served.value.source})"
        else:
            entry["state"] = "applied"
        documents.append(entry)
    # A file that cannot be parsed has no documents of its own; what it served before still serves.
    for key, served in by_path.stale.get(state.path, ()):
        if key not in keys_here:
            documents.append(
                {
                    "line": served.value.source.line,
                    **_key(key),
                    "state": f"failed, serving the last good version ({served.value.source})",
                }
            )
    errors = [str(e) for e in state.errors + tuple(e for d in state.documents for e in d.errors)]
    # Errors the directory found about this file as a whole (such as duplicates) are not in its state.
    seen = set(errors)
    for error in map(str, by_path.errors.get(state.path, ())):
        if error not in seen:
            seen.add(error)
            errors.append(error)
    if state.path in loaded.being_written:
        summary = "being written: its previous version is served until the writer closes it"
    elif not errors:
        summary = "applied"
    elif any(d["state"] == "applied" for d in documents):
        summary = "partly applied"
    else:
        summary = "failed"
    # Notes do not change the state: the documents they are about are applied.
    notes = [str(w) for w in by_path.warnings.get(state.path, ())]
    return {"state": summary, "errors": errors, "notes": notes, "documents": documents}


def _key(key: DocumentKey) -> dict[str, str]:
    return {"kind": key.kind, "namespace": key.namespace, "name": key.name}
