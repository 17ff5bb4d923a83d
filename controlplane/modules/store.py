"""The verified modules: one copy of each in memory, by sha256, for the configs that carry them inline, and
a content-addressed folder (a module's file name is its sha256) that keeps them across restarts and that
proxies read with local delivery.

With modules kept in memory the folder is only a cache: a folder deleted, made read-only or full, or a
module file made unreadable, costs a download after the next restart, never a plugin that was running."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from controlplane.files import write_atomically

log = logging.getLogger(__name__)

_MODULE_FILE = re.compile(r"^([a-f0-9]{64})\.wasm$")


class StoreFailed(Exception):
    """A module could not be written where the proxies read it; the message says where and why."""


class ModuleStore:
    """Blocking: called from worker threads (`read` and `keep_only` also from the loop: they touch no disk
    for modules in memory, and wait for no disk write). One lock keeps a purge from deleting a module being
    put; another, held only for moments, guards the modules in memory."""

    def __init__(self, root: str | Path, keep_in_memory: bool = True, just_put_seconds: float = 60.0) -> None:
        """`keep_in_memory`: modules go to proxies inside their configs, so each is held in memory once and
        the folder is a cache. Otherwise proxies read the files, and a module that cannot be written fails.
        `just_put_seconds`: how long `keep_only` spares a module just put, whose fetch may not have reported
        its status yet."""
        self.root = Path(root)
        self.keep_in_memory = keep_in_memory
        self._just_put_seconds = just_put_seconds
        self._memory: dict[str, bytes] = {}
        self._put_at: dict[str, float] = {}
        """When each module in memory was last put: one put a moment ago may not have a status yet."""
        self._unwritten: set[str] = set()
        """Modules that could not be written, each warned about once."""
        self._lock = threading.Lock()
        self._memory_lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if not keep_in_memory:
                raise
            log.warning("cannot create the module cache %s (%s): modules are kept in memory only", root, exc)

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.wasm"

    def has(self, sha256: str) -> bool:
        """True when the module's file is there."""
        return self.path(sha256).is_file()

    def put(self, content: bytes) -> str:
        """Keeps `content` and returns its sha256. The file is written to a temporary name and renamed, so
        a reader never sees half a module; a damaged copy already there is replaced."""
        sha256 = hashlib.sha256(content).hexdigest()
        if self.keep_in_memory:
            self._remember(sha256, content)
        with self._lock:
            try:
                self._write(sha256, content)
            except OSError as exc:
                if not self.keep_in_memory:
                    raise StoreFailed(f"cannot write the module to {self.root}: {exc.strerror or exc}") from None
                if sha256 in self._unwritten:
                    return sha256
                self._unwritten.add(sha256)
                log.warning(
                    "cannot write module %s to the cache %s (%s): serving it from memory; after a restart it "
                    "is fetched again",
                    sha256,
                    self.root,
                    exc.strerror or exc,
                )
        return sha256

    def _write(self, sha256: str, content: bytes) -> None:
        if _file_holds(self.path(sha256), sha256):
            try:
                os.utime(self.path(sha256))  # fetched again: young again for `purge`
            except OSError:
                pass  # a read-only folder still holds a good copy
            return
        self.root.mkdir(parents=True, exist_ok=True)  # the folder may have been deleted under us
        # Readable by all: with local delivery, proxies running as another user read the file.
        write_atomically(self.path(sha256), content, 0o644)

    def read(self, sha256: str) -> bytes | None:
        """The module's bytes: from memory, else from its file if that still holds what its name says (then
        kept in memory). None when neither has it."""
        content = self._memory.get(sha256)
        if content is not None:
            return content
        try:
            content = self.path(sha256).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(content).hexdigest() != sha256:
            return None
        if self.keep_in_memory:
            self._remember(sha256, content)
        return content

    def _remember(self, sha256: str, content: bytes) -> None:
        with self._memory_lock:
            self._memory[sha256] = content
            self._put_at[sha256] = time.monotonic()

    def intact(self, sha256: str) -> bool:
        """True when the module is at hand as its name says: in memory, or (with local delivery, where
        proxies read the file) in a file that still holds it (a disk can lose a write)."""
        if self.keep_in_memory:
            return self.read(sha256) is not None
        return _file_holds(self.path(sha256), sha256)

    def keep_only(self, sha256s: Iterable[str]) -> None:
        """Drops the in-memory copies of the modules not in `sha256s` (no plugin serves them any more),
        except those just put."""
        keep = set(sha256s)
        recent = time.monotonic() - self._just_put_seconds
        with self._memory_lock:
            for sha256 in set(self._memory) - keep:
                if self._put_at.get(sha256, 0.0) < recent:
                    del self._memory[sha256]
                    self._put_at.pop(sha256, None)

    def purge(self, keep: Iterable[str], older_than: float) -> list[str]:
        """Deletes the module files not in `keep` last written before `older_than` (seconds since the epoch),
        and returns their sha256s. A file's mtime is when it was last fetched."""
        keep = set(keep)
        removed = []
        with self._lock:
            try:
                entries = list(os.scandir(self.root))
            except FileNotFoundError:
                return []
            for entry in entries:
                match = _MODULE_FILE.match(entry.name)
                if match and match.group(1) not in keep and entry.stat().st_mtime < older_than:
                    os.unlink(entry.path)
                    removed.append(match.group(1))
        return removed


def _file_holds(path: Path, sha256: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest() == sha256
    except OSError:
        return False
