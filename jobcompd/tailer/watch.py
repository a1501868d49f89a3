"""The watch on the log's directory: watchdog events only wake the reader (they are hints)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver


class _Wake(FileSystemEventHandler):
    """Sets ``wake`` for any event about the log or its rotated siblings; nothing else."""

    def __init__(self, name: str, wake: threading.Event) -> None:
        self._name = name
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, event.dest_path):
            if path and os.path.basename(os.fsdecode(path)).startswith(self._name):
                self._wake.set()
                return

_WAKING_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
]


class DirectoryWatch:
    """A watchdog observer on the log's directory that sets ``wake`` when something may have
    changed near the log. A directory that cannot be watched yet (it does not exist) is retried
    at every :meth:`ensure`; meanwhile the reader's periodic re-check is the only wake-up."""

    def __init__(self, path: Path, wake: threading.Event, *, poll: bool, timeout: float, logger: Any) -> None:
        self._path = path
        self._wake = wake
        self._poll = poll
        self._timeout = timeout
        self._log = logger
        self._observer: BaseObserver | None = None
        self._watch: ObservedWatch | None = None
        self._failed = False

    def start(self) -> None:
        """Start the observer (inotify, or polling for NFS) and watch the directory if it can."""
        self._observer = PollingObserver(timeout=self._timeout) if self._poll else Observer()
        self._observer.daemon = True
        self._observer.start()
        self.ensure()

    def ensure(self) -> None:
        """Watch the directory, if it is not watched yet and can be now."""
        if self._observer is None or self._watch is not None:
            return
        try:
            self._watch = self._observer.schedule(
                _Wake(self._path.name, self._wake), str(self._path.parent),
                recursive=False, event_filter=_WAKING_EVENTS,
            )
            self._failed = False
        except OSError as exc:
            if not self._failed:
                self._failed = True
                self._log.warning("cannot watch the log directory yet: polling it",
                                  path=str(self._path.parent), error=str(exc))

    def stop(self) -> None:
        """Stop the observer (idempotent)."""
        observer, self._observer = self._observer, None
        self._watch = None
        if observer is not None:
            observer.stop()
            observer.join(timeout=10)
