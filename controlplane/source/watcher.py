"""Tells the owner that something below the config directory may have changed. The owner reloads the
whole directory, which is cheap and cannot miss an event's meaning (renames, symlink swaps)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver


class _Forward(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, notify: Callable[[], None]) -> None:
        self._loop = loop
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        self._loop.call_soon_threadsafe(self._notify)


class DirectoryWatcher:
    def __init__(self, roots: list[str], notify: Callable[[], None]) -> None:
        self._roots = roots
        self._notify = notify
        self._observer: BaseObserver | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        observer = Observer()
        handler = _Forward(loop, self._notify)
        for root in self._roots:
            # Watch the real folder: a config dir that is a symlink is followed, and a watch on the
            # parent of a file catches the file being replaced.
            target = os.path.realpath(root)
            observer.schedule(handler, target if os.path.isdir(target) else os.path.dirname(target), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
