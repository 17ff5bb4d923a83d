"""Tells the owner that something below the config directories may have changed, and which files are being
written right now. The owner reloads whole directories, which is cheap and cannot miss an event's meaning.

What a directory is can change under the watch: git-sync replaces a `current` symlink, Kubernetes swaps a
`..data` symlink, a deploy script renames a new folder over the old one. inotify watches folders (inodes),
not names, so `refresh()` works out again which real folders decide what the roots hold, and moves the
watches when that changed. The owner calls it before every reload; events in the folders that hold the
symlinks (and the roots themselves) trigger those reloads."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from controlplane.source.directory import is_config_path

log = logging.getLogger(__name__)

WRITE_GRACE_SECONDS = 3.0
"""How long a file modified and not yet closed is left alone: a writer that never closes (or a platform
that reports no close) delays that file by this much, no more."""
_MAX_SYMLINK_HOPS = 40
_SWAP_FILE = re.compile(r"^\..*\.sw[a-px]$")


def is_noise(path: str) -> bool:
    """Files that editors and git write beside the config and that never become config themselves: vim's
    swap and write-test files, backups, emacs lock and autosave files, JetBrains' temporaries, everything
    inside `.git` (including `index.lock`). A save that ends in a rename still reaches the real name, and
    that event is kept."""
    parts = Path(path).parts
    if ".git" in parts:
        return True
    name = parts[-1] if parts else ""
    return (
        name == "4913"
        or name.endswith("~")
        or (name.startswith("#") and name.endswith("#"))
        or name.startswith(".#")
        or "___jb_" in name
        or bool(_SWAP_FILE.match(name))
    )


def matters(event: FileSystemEvent) -> bool:
    """Whether an event can change what the loader reads."""
    if isinstance(event, FileOpenedEvent | FileClosedNoWriteEvent | DirModifiedEvent):
        # Reads, and the folder echo of a create/delete/move that is reported on its own.
        return False
    paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
    if all(is_noise(p) for p in paths):
        return False
    if isinstance(event, FileModifiedEvent | FileClosedEvent) and not any(is_config_path(p) for p in paths):
        # Content of a file the loader never reads. Creations, deletions and renames always count: the name
        # may be a folder or a symlink (`..data`, `current`) that leads to config.
        return False
    return True


@dataclass(frozen=True)
class Watch:
    folder: str
    """A real path (no symlink in it)."""
    recursive: bool
    names: frozenset[str] | None
    """Entries of `folder` whose events matter; None: all."""
    identity: tuple[int, int]
    """Device and inode when planned: a folder replaced under the same name must be watched anew."""


def plan_watches(roots: list[str]) -> set[Watch]:
    """The watches that see every change to what `roots` hold, in the file system as it is now."""
    wanted: dict[tuple[str, bool], set[str] | None] = {}

    def add(folder: str, recursive: bool, name: str | None) -> None:
        key = (folder, recursive)
        if name is None:
            wanted[key] = None
        elif key not in wanted:
            wanted[key] = {name}
        elif (names := wanted[key]) is not None:
            names.add(name)

    for root in roots:
        absolute = os.path.abspath(root)
        # The root's own entry: it may be created, deleted, or replaced by a rename.
        add(os.path.realpath(os.path.dirname(absolute)), False, os.path.basename(absolute))
        for link in symlinks_on_path(absolute):
            add(os.path.dirname(link), False, os.path.basename(link))
        target = os.path.realpath(absolute)
        if os.path.isdir(target):
            add(target, True, None)
            for linked in _linked_folders_outside(target):
                add(linked, True, None)
        else:
            add(os.path.dirname(target), False, os.path.basename(target))

    watches = set()
    for (folder, recursive), names in wanted.items():
        try:
            stat = os.stat(folder)
        except OSError:
            continue  # not there (yet): its parent's watch reports its arrival
        watches.add(Watch(folder, recursive, None if names is None else frozenset(names), (stat.st_dev, stat.st_ino)))
    return watches


def symlinks_on_path(path: str) -> list[str]:
    """Every symlink met while resolving `path`, as real paths: the places where a swap changes what
    `path` means."""
    found: list[str] = []
    parts = list(Path(os.path.abspath(path)).parts[1:])
    current = os.sep
    while parts:
        candidate = os.path.join(current, parts.pop(0))
        if os.path.islink(candidate) and len(found) < _MAX_SYMLINK_HOPS:
            found.append(candidate)
            target = Path(os.readlink(candidate))
            parts = list(target.parts[1:] if target.is_absolute() else target.parts) + parts
            current = os.sep if target.is_absolute() else current
        else:
            # `current` never holds a symlink, so `..` can be taken literally.
            current = os.path.normpath(candidate)
    return found


def _linked_folders_outside(root: str) -> list[str]:
    """Real folders the loader reaches through symlinked subfolders of `root` that a recursive watch on
    `root` does not cover (it does not follow links)."""
    found: list[str] = []
    for folder, subfolders, _ in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in subfolders:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.isdir(target) and os.path.commonpath([target, root]) != root:
                    found.append(target)
    return found


class _Forward(FileSystemEventHandler):
    def __init__(self, watch: Watch, on_event: Callable[[FileSystemEvent], None], on_gone: Callable[[], None]) -> None:
        self._names = watch.names
        self._folder = watch.folder
        self._on_event = on_event
        self._on_gone = on_gone

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type == "deleted" and os.fsdecode(event.src_path) == self._folder:
            # watchdog stops watching a deleted folder; a new folder of that name may get the same inode.
            self._on_gone()
        if self._names is not None:
            paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
            if not any(p == self._folder or os.path.basename(p) in self._names for p in paths):
                return
        self._on_event(event)


class _Writes:
    """Config files modified and not yet closed: a reader would see them half written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}

    def record(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        with self._lock:
            if isinstance(event, FileModifiedEvent):
                self._since.setdefault(os.fsdecode(event.src_path), time.monotonic())
            elif isinstance(event, FileClosedEvent | FileDeletedEvent | FileMovedEvent):
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    self._since.pop(os.fsdecode(path), None)

    def open_now(self) -> frozenset[str]:
        horizon = time.monotonic() - WRITE_GRACE_SECONDS
        with self._lock:
            for path in [p for p, since in self._since.items() if since < horizon]:
                del self._since[path]
            return frozenset(self._since)


class DirectoryWatcher:
    def __init__(self, roots: list[str], notify: Callable[[], None]) -> None:
        self._roots = roots
        self._notify = notify
        self._observer: BaseObserver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watches: dict[Watch, ObservedWatch] = {}
        self._gone: set[Watch] = set()
        self._writes = _Writes()
        # Only inotify reports closes; elsewhere a modified file is read as it is.
        self._tracks_writes = getattr(Observer, "__name__", "") == "InotifyObserver"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        observer = Observer()
        observer.daemon = True
        observer.start()
        self._observer = observer
        self.refresh()

    def refresh(self) -> None:
        """Moves the watches to the folders that now decide what the roots hold."""
        if self._observer is None:
            return
        wanted = plan_watches(self._roots)
        gone, self._gone = self._gone, set()
        for watch in (set(self._watches) - wanted) | (gone & set(self._watches)):
            log.info("no longer watching %s", watch.folder)
            try:
                self._observer.unschedule(self._watches.pop(watch))
            except (KeyError, OSError):  # its emitter stopped when the folder was deleted
                pass
        for watch in wanted - set(self._watches):
            try:
                self._watches[watch] = self._observer.schedule(
                    _Forward(watch, self._on_event, functools.partial(self._mark_gone, watch)),
                    watch.folder,
                    recursive=watch.recursive,
                )
            except OSError as exc:  # gone since it was planned: the next refresh tries again
                log.debug("cannot watch %s: %s", watch.folder, exc)
                continue
            log.info("watching %s%s", watch.folder, " and below" if watch.recursive else "")

    def writes_in_progress(self) -> frozenset[str]:
        """Real paths of config files being written: the loader keeps their previous version for now."""
        return self._writes.open_now() if self._tracks_writes else frozenset()

    def _mark_gone(self, watch: Watch) -> None:
        """On the observer's thread."""
        self._gone.add(watch)

    def _on_event(self, event: FileSystemEvent) -> None:
        """On the observer's thread."""
        if not matters(event):
            return
        if self._tracks_writes:
            self._writes.record(event)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._notify)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
            self._watches.clear()
