"""Loads a config directory into a `Config`, keeping the last good version of whatever is now broken."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from controlplane.errors import ConfigError
from controlplane.model import Config, PullSecret, ServiceEntry, Sidecar, WasmPlugin
from controlplane.regular_file import read_regular_file
from controlplane.source.documents import Declared, DocumentKey, DocumentResult, read_document
from controlplane.source.secrets import missing_pull_secrets
from controlplane.source.yaml_documents import AliasBudget, parse_yaml

log = logging.getLogger(__name__)

YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileState:
    path: str
    digest: str
    documents: tuple[DocumentResult, ...]
    errors: tuple[ConfigError, ...]
    """Errors of the file as a whole (unreadable, YAML syntax)."""
    empty: bool = False
    """Holds nothing but white space."""


@dataclass(frozen=True)
class Served:
    value: Declared
    path: str
    stale: bool
    """True when the file now holds a broken version and this is the last good one."""


@dataclass(frozen=True)
class LoadedDirectory:
    files: Mapping[str, FileState] = field(default_factory=dict)
    served: Mapping[DocumentKey, Served] = field(default_factory=dict)
    errors: tuple[ConfigError, ...] = ()
    warnings: tuple[ConfigError, ...] = ()
    """What is valid but may not do what its author meant (a targetRef this control plane cannot act on)."""
    config: Config = Config()
    being_written: frozenset[str] = frozenset()
    """Files that kept their previous version because a writer had them open."""


@dataclass(frozen=True)
class FoundFiles:
    paths: list[str]
    unlistable: dict[str, str]
    """Folders that could not be listed (no permission, out of file descriptors), with the reason. What they
    held is unknown, which is not the same as empty."""


def find_yaml_files(roots: list[str]) -> FoundFiles:
    """Every YAML file below the roots, in a stable order; hidden files and folders (editor swap files,
    the `..data` folders of Kubernetes ConfigMaps) are skipped."""
    found: set[str] = set()
    unlistable: dict[str, str] = {}

    def cannot_list(error: OSError) -> None:
        unlistable[os.fsdecode(error.filename)] = error.strerror or str(error)

    for root in roots:
        if os.path.isfile(root):
            found.add(root)
            continue
        visited: set[tuple[int, int]] = set()
        for folder, subfolders, files in os.walk(root, onerror=cannot_list, followlinks=True):
            try:
                stat = os.stat(folder)
            except OSError as exc:
                cannot_list(exc)
                subfolders[:] = []
                continue
            if (stat.st_dev, stat.st_ino) in visited:
                # A symlink back up the tree would otherwise be walked until paths get too long, and every
                # file below it found again under another name.
                subfolders[:] = []
                continue
            visited.add((stat.st_dev, stat.st_ino))
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            found.update(os.path.join(folder, f) for f in files if f.endswith(YAML_SUFFIXES) and not f.startswith("."))
    return FoundFiles(sorted(found), unlistable)


def read_file(path: str, previous: FileState | None, budget: AliasBudget | None = None) -> FileState:
    """`budget`: what YAML aliases may still add in the load this file is read for."""
    try:
        content = read_regular_file(path, MAX_FILE_BYTES)
    except OSError as exc:
        return FileState(path, "", (), (ConfigError(path, 1, "<file>", f"cannot read: {exc.strerror}"),))
    digest = hashlib.sha256(content).hexdigest()
    if previous is not None and previous.digest == digest:
        return previous
    if len(content) > MAX_FILE_BYTES:
        return FileState(path, digest, (), (ConfigError(path, 1, "<file>", f"larger than {MAX_FILE_BYTES} bytes"),))
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        return FileState(path, digest, (), (ConfigError(path, line, "<file>", "not UTF-8 text"),))
    try:
        yaml_documents, errors = parse_yaml(path, text, budget)
        if budget is not None and path in budget.refused:
            digest = ""  # not remembered: read again at the next load, with a budget of its own
        results = tuple(r for r in (read_document(d) for d in yaml_documents) if r is not None)
    except Exception as exc:  # a bug must cost this file only, never the reload of every other file
        log.exception("%s: failed to read", path)
        return FileState(path, digest, (), (ConfigError(path, 1, "<file>", f"internal error: {exc!r}"),))
    return FileState(path, digest, results, tuple(errors), empty=not text.strip())


def load_directory(
    roots: list[str],
    previous: LoadedDirectory | None = None,
    being_written: frozenset[str] = frozenset(),
    preferred: Mapping[DocumentKey, str] | None = None,
) -> LoadedDirectory:
    """`being_written`: real paths of files a writer has not closed yet. Read now they could be empty or
    cut short and still parse, so they keep their previous version (or stay absent) until closed.
    `preferred`: for a document declared in several files, the file that served it before a restart."""
    previous = previous or LoadedDirectory()
    files: dict[str, FileState] = {}
    held: set[str] = set()
    missing = missing_roots(roots)
    found = find_yaml_files([r for r in roots if r not in missing])
    unknown = {root: _root_problem(root) for root in missing} | {
        folder: f"cannot list: {reason}; what it held keeps serving" for folder, reason in found.unlistable.items()
    }
    for folder in unknown:
        # A root renamed away or not mounted yet, a folder that cannot be listed: not an empty config. Pushing
        # that would remove their plugins and listeners from every proxy. What they held keeps serving.
        files.update((path, state) for path, state in previous.files.items() if _is_under(path, folder))
    budget = AliasBudget()
    for path in found.paths:
        if being_written and os.path.realpath(path) in being_written:
            held.add(path)
            if path in previous.files:
                files[path] = previous.files[path]
            continue
        files[path] = _emptied(read_file(path, previous.files.get(path), budget), previous)
    loaded = assemble(files, previous, preferred)
    folder_errors = tuple(
        ConfigError(folder, 1, "<config-dir>" if folder in roots else "<folder>", problem)
        for folder, problem in unknown.items()
    )
    return replace(loaded, being_written=frozenset(held), errors=tuple(sorted(folder_errors + loaded.errors)))


def _emptied(state: FileState, previous: LoadedDirectory) -> FileState:
    """A file that served documents and is now empty was most likely truncated by mistake (a failed write, a
    full disk), not emptied to remove them: that is done by deleting it. Like a syntax error, it keeps
    serving what it held, and says so."""
    if not state.empty or state.errors:
        return state
    held = sorted(str(key) for key, served in previous.served.items() if served.path == state.path)
    if not held:
        return state
    reason = f"empty: still serving its last good {', '.join(held)}; delete the file to remove them"
    return replace(state, errors=(ConfigError(state.path, 1, "<file>", reason),))


def missing_roots(roots: list[str]) -> list[str]:
    """Roots that are neither a folder nor a file (following symlinks): gone, mistyped or not mounted."""
    return [root for root in roots if not (os.path.isdir(root) or os.path.isfile(root))]


def _root_problem(root: str) -> str:
    if os.path.lexists(root) and not os.path.exists(root):
        return "a symlink to nothing; what it held keeps serving"
    if os.path.exists(root):
        return "not a folder or a file; what it held keeps serving"
    return "no such folder or file; what it held keeps serving"


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def assemble(
    files: Mapping[str, FileState], previous: LoadedDirectory, preferred: Mapping[DocumentKey, str] | None = None
) -> LoadedDirectory:
    """Chooses, for every document key, the version to serve: the valid one, else the last good one."""
    errors: list[ConfigError] = []
    warnings: list[ConfigError] = []
    candidates: dict[DocumentKey, list[Served]] = {}
    broken_files = set()
    for state in files.values():
        errors.extend(state.errors)
        if state.errors and not state.documents:
            broken_files.add(state.path)
        for document in state.documents:
            errors.extend(document.errors)
            warnings.extend(document.warnings)
            if document.key is None:
                continue
            if document.value is not None:
                candidates.setdefault(document.key, []).append(Served(document.value, state.path, False))
            else:
                last_good = previous.served.get(document.key)
                if last_good is not None and last_good.path == state.path:
                    candidates.setdefault(document.key, []).append(Served(last_good.value, state.path, True))
    for key, served in previous.served.items():
        if served.path in broken_files and key not in candidates:
            candidates[key] = [Served(served.value, served.path, True)]

    chosen: dict[DocumentKey, Served] = {}
    for key, options in candidates.items():
        keep = _choose(key, options, previous, preferred or {})
        if len(options) > 1:
            errors.extend(_duplicate_errors(key, options, keep))
            others = ", ".join(str(o.value.source) for o in options if o is not keep)
            at = keep.value.source
            warnings.append(
                ConfigError(at.path, at.line, "metadata.name", f"{key} is also declared in {others}; this one serves")
            )
        chosen[key] = keep
        if keep.stale:
            log.warning("%s: serving the last good version of %s", keep.path, key)

    values = [chosen[k].value for k in sorted(chosen, key=lambda k: (k.kind, k.namespace, k.name))]
    config = Config(
        plugins=tuple(v for v in values if isinstance(v, WasmPlugin)),
        sidecars=tuple(v for v in values if isinstance(v, Sidecar)),
        secrets=tuple(v for v in values if isinstance(v, PullSecret)),
        service_entries=tuple(v for v in values if isinstance(v, ServiceEntry)),
    )
    warnings.extend(missing_pull_secrets(config))
    return LoadedDirectory(
        files=files,
        served=chosen,
        errors=tuple(sorted(set(errors))),
        warnings=tuple(sorted(set(warnings))),
        config=config,
    )


def _choose(
    key: DocumentKey, options: list[Served], previous: LoadedDirectory, preferred: Mapping[DocumentKey, str]
) -> Served:
    """Of the files declaring `key`: the one serving now, else the one that served before a restart, else
    the one whose path sorts first. Never the order files happen to be listed in, so that a fresh start and
    a second replica choose alike."""
    serving = previous.served.get(key)
    for path in (serving.path if serving else None, preferred.get(key)):
        keep = next((o for o in options if o.path == path), None)
        if keep is not None:
            return keep
    return min(options, key=lambda o: o.path)


def _duplicate_errors(key: DocumentKey, options: list[Served], keep: Served) -> list[ConfigError]:
    paths = ", ".join(f"{o.value.source}" for o in options)
    reason = f"{key} is declared more than once ({paths}); serving {keep.value.source}"
    return [
        ConfigError(o.value.source.path, o.value.source.line, "metadata.name", reason) for o in options if o is not keep
    ]


def is_config_path(path: str) -> bool:
    name = Path(path).name
    return name.endswith(YAML_SUFFIXES) and not name.startswith(".")
