"""Loads a config directory into a `Config`, keeping the last good version of whatever is now broken."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from controlplane.errors import ConfigError
from controlplane.model import Config, PullSecret, Sidecar, WasmPlugin
from controlplane.source.documents import Declared, DocumentKey, DocumentResult, read_document
from controlplane.source.secrets import missing_pull_secrets
from controlplane.source.yaml_documents import parse_yaml

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
    config: Config = Config()
    being_written: frozenset[str] = frozenset()
    """Files that kept their previous version because a writer had them open."""


def find_yaml_files(roots: list[str]) -> list[str]:
    """Every YAML file below the roots, in a stable order; hidden files and folders (editor swap files,
    the `..data` folders of Kubernetes ConfigMaps) are skipped."""
    found: set[str] = set()
    for root in roots:
        if os.path.isfile(root):
            found.add(root)
            continue
        visited: set[tuple[int, int]] = set()
        for folder, subfolders, files in os.walk(root, followlinks=True):
            try:
                stat = os.stat(folder)
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) in visited:
                # A symlink back up the tree would otherwise be walked until paths get too long, and every
                # file below it found again under another name.
                subfolders[:] = []
                continue
            visited.add((stat.st_dev, stat.st_ino))
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            found.update(os.path.join(folder, f) for f in files if f.endswith(YAML_SUFFIXES) and not f.startswith("."))
    return sorted(found)


def read_file(path: str, previous: FileState | None) -> FileState:
    try:
        with open(path, "rb") as handle:
            content = handle.read(MAX_FILE_BYTES + 1)
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
        yaml_documents, errors = parse_yaml(path, text)
        results = tuple(r for r in (read_document(d) for d in yaml_documents) if r is not None)
    except Exception as exc:  # a bug must cost this file only, never the reload of every other file
        log.exception("%s: failed to read", path)
        return FileState(path, digest, (), (ConfigError(path, 1, "<file>", f"internal error: {exc!r}"),))
    return FileState(path, digest, results, tuple(errors))


def load_directory(
    roots: list[str], previous: LoadedDirectory | None = None, being_written: frozenset[str] = frozenset()
) -> LoadedDirectory:
    """`being_written`: real paths of files a writer has not closed yet. Read now they could be empty or
    cut short and still parse, so they keep their previous version (or stay absent) until closed."""
    previous = previous or LoadedDirectory()
    files: dict[str, FileState] = {}
    held: set[str] = set()
    for path in find_yaml_files(roots):
        if being_written and os.path.realpath(path) in being_written:
            held.add(path)
            if path in previous.files:
                files[path] = previous.files[path]
            continue
        files[path] = read_file(path, previous.files.get(path))
    loaded = assemble(files, previous)
    return replace(loaded, being_written=frozenset(held)) if held else loaded


def assemble(files: Mapping[str, FileState], previous: LoadedDirectory) -> LoadedDirectory:
    """Chooses, for every document key, the version to serve: the valid one, else the last good one."""
    errors: list[ConfigError] = []
    candidates: dict[DocumentKey, list[Served]] = {}
    broken_files = set()
    for state in files.values():
        errors.extend(state.errors)
        if state.errors and not state.documents:
            broken_files.add(state.path)
        for document in state.documents:
            errors.extend(document.errors)
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
        if len(options) > 1:
            serving = previous.served.get(key)
            keep = next((o for o in options if serving and o.path == serving.path), options[0])
            paths = ", ".join(f"{o.value.source}" for o in options)
            for option in options:
                if option is not keep:
                    errors.append(
                        ConfigError(
                            option.value.source.path,
                            option.value.source.line,
                            "metadata.name",
                            f"{key} is declared more than once ({paths}); serving {keep.value.source}",
                        )
                    )
        else:
            keep = options[0]
        chosen[key] = keep
        if keep.stale:
            log.warning("%s: serving the last good version of %s", keep.path, key)

    values = [chosen[k].value for k in sorted(chosen, key=lambda k: (k.kind, k.namespace, k.name))]
    config = Config(
        plugins=tuple(v for v in values if isinstance(v, WasmPlugin)),
        sidecars=tuple(v for v in values if isinstance(v, Sidecar)),
        secrets=tuple(v for v in values if isinstance(v, PullSecret)),
    )
    errors.extend(missing_pull_secrets(config))
    return LoadedDirectory(files=files, served=chosen, errors=tuple(sorted(set(errors))), config=config)


def is_config_path(path: str) -> bool:
    name = Path(path).name
    return name.endswith(YAML_SUFFIXES) and not name.startswith(".")
