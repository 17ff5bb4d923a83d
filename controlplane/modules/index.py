"""The cache's memory across restarts: which module each resolved reference gave, and when it was last
used. A small JSON file beside the modules, replaced atomically, so a restart with the registry down still
serves what was pinned or pulled with IfNotPresent."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from controlplane.files import write_atomically
from controlplane.model import ModuleKey

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
_FORMAT = 1


@dataclass(frozen=True)
class IndexEntry:
    sha256: str
    size: int
    used_at: float
    """Seconds since the epoch when a plugin last needed it."""
    manifest: str = ""
    """For OCI, the manifest digest the module came from: a re-pull that finds it again skips the download.
    Empty in indexes written before it was kept, and for other urls."""


def entry_name(key: ModuleKey) -> str:
    """A module is recorded only once it verified, so a key with signers records that its signature did:
    a restart with the same keys serves it without checking again, other keys find no entry."""
    name = [key.url, key.sha256, key.pull_secret]
    if key.signers:
        name.append(hashlib.sha256(json.dumps(key.signers).encode()).hexdigest())
    return json.dumps(name)


def expired(entries: Mapping[str, IndexEntry], wanted: Iterable[str], now: float, expiry_seconds: float) -> set[str]:
    """Entries no plugin needs now and none has needed for `expiry_seconds`."""
    keep = set(wanted)
    return {name for name, entry in entries.items() if name not in keep and now - entry.used_at > expiry_seconds}


class ModuleIndex:
    """Written from worker threads (the event loop must not wait for a disk), hence the lock."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / INDEX_FILE
        self._lock = threading.Lock()
        self._unsaved = False
        """The last save failed (and was warned about)."""
        self._entries = self._load()

    @property
    def entries(self) -> Mapping[str, IndexEntry]:
        with self._lock:
            return dict(self._entries)

    def get(self, key: ModuleKey) -> IndexEntry | None:
        with self._lock:
            return self._entries.get(entry_name(key))

    def record(self, key: ModuleKey, sha256: str, size: int, now: float, manifest: str = "") -> None:
        entry = IndexEntry(sha256, size, now, manifest)
        with self._lock:
            if self._entries.get(entry_name(key)) != entry:
                self._entries[entry_name(key)] = entry
                self._save()

    def touch(self, keys: Iterable[ModuleKey], now: float) -> None:
        with self._lock:
            for key in keys:
                entry = self._entries.get(entry_name(key))
                if entry is not None:
                    self._entries[entry_name(key)] = replace(entry, used_at=now)
            self._save()

    def forget(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self._entries.pop(name, None)
            self._save()

    def _load(self) -> dict[str, IndexEntry]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return {name: IndexEntry(**fields) for name, fields in data["modules"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # The modules themselves are still there; only what was pulled from where must be learnt again.
            log.warning("ignoring the module index %s (%s); modules will be pulled again", self.path, exc)
            return {}

    def _save(self) -> None:
        text = json.dumps(
            {"format": _FORMAT, "modules": {n: asdict(e) for n, e in sorted(self._entries.items())}}, indent=1
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # the cache dir may have been deleted
            # Owner only: the urls it names may carry credentials.
            write_atomically(self.path, text.encode(), 0o600)
        except OSError as exc:
            # The index in memory still serves; a cache dir that cannot be written costs pulls after a
            # restart, never a running plugin.
            if not self._unsaved:
                log.warning(
                    "cannot write the module index %s (%s); modules are pulled again after a restart",
                    self.path,
                    exc.strerror or exc,
                )
            self._unsaved = True
        else:
            self._unsaved = False
