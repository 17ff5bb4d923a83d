"""A content-addressed folder of verified modules: a module's file name is its sha256."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from controlplane.files import write_atomically

_MODULE_FILE = re.compile(r"^([a-f0-9]{64})\.wasm$")


class ModuleStore:
    """Blocking: called from worker threads. A lock keeps a purge from deleting a module being put."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.wasm"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, content: bytes) -> str:
        """Stores `content` and returns its sha256. Written to a temporary name and renamed, so a reader
        never sees half a module; a damaged copy already there is replaced."""
        sha256 = hashlib.sha256(content).hexdigest()
        with self._lock:
            if self.intact(sha256):
                os.utime(self.path(sha256))  # fetched again: young again for `purge`
            else:
                # Readable by all: with local delivery, proxies running as another user read the file.
                write_atomically(self.path(sha256), content, 0o644)
        return sha256

    def intact(self, sha256: str) -> bool:
        """True when the file is there and still holds what its name says (a disk can lose a write)."""
        try:
            with open(self.path(sha256), "rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest() == sha256
        except OSError:
            return False

    def purge(self, keep: Iterable[str], older_than: float) -> list[str]:
        """Deletes the modules not in `keep` last written before `older_than` (seconds since the epoch), and
        returns their sha256s. A file's mtime is when it was last fetched."""
        keep = set(keep)
        removed = []
        with self._lock:
            for entry in os.scandir(self.root):
                match = _MODULE_FILE.match(entry.name)
                if match and match.group(1) not in keep and entry.stat().st_mtime < older_than:
                    os.unlink(entry.path)
                    removed.append(match.group(1))
        return removed
