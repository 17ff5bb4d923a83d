"""Per file, what is applied and what failed and why: the admin view of a loaded directory. Pure."""

from __future__ import annotations

from typing import Any

from controlplane.source.directory import FileState, LoadedDirectory
from controlplane.source.documents import DocumentKey


def file_status(loaded: LoadedDirectory) -> dict[str, dict[str, Any]]:
    return {path: _one_file(loaded, state) for path, state in loaded.files.items()}


def _one_file(loaded: LoadedDirectory, state: FileState) -> dict[str, Any]:
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
    for key, served in loaded.served.items():
        if served.path == state.path and served.stale and key not in keys_here:
            documents.append(
                {
                    "line": served.value.source.line,
                    **_key(key),
                    "state": f"failed, serving the last good version ({served.value.source})",
                }
            )
    errors = [str(e) for e in state.errors + tuple(e for d in state.documents for e in d.errors)]
    # Errors the directory found about this file as a whole (such as duplicates) are not in its state.
    errors += [str(e) for e in loaded.errors if e.path == state.path and str(e) not in errors]
    if state.path in loaded.being_written:
        summary = "being written: its previous version is served until the writer closes it"
    elif not errors:
        summary = "applied"
    elif any(d["state"] == "applied" for d in documents):
        summary = "partly applied"
    else:
        summary = "failed"
    # Notes do not change the state: the documents they are about are applied.
    notes = [str(w) for w in loaded.warnings if w.path == state.path]
    return {"state": summary, "errors": errors, "notes": notes, "documents": documents}


def _key(key: DocumentKey) -> dict[str, str]:
    return {"kind": key.kind, "namespace": key.namespace, "name": key.name}
