"""The watch on the log's directory: watchdog events only wake the reader (they are hints).

With inotify, the reader is woken from watchdog's inotify reader thread itself (``InotifyFD``, one
thread). watchdog's ``Observer`` would pass each event through two more threads (an emitter that
builds event objects, a dispatcher that calls handlers): at a thousand lines a second that was a
quarter of the daemon's CPU and three thread hand-offs on the way from a write to the read. With
``poll`` (NFS), watchdog's ``PollingObserver`` compares directory snapshots as before.
"""

from __future__ import annotations

import os
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
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)
from watchdog.observers.polling import PollingObserver

from jobcompd.tailer.followed import _link_target
from jobcompd.wakeup import Wakeup

_C = InotifyConstants
# What can change the log or a rotated sibling: appends and truncation, create, rename, delete,
# a writer closing it, a mode change (logrotate's create).
_INOTIFY_MASK = Mask(
    _C.IN_MODIFY | _C.IN_ATTRIB | _C.IN_CLOSE_WRITE | _C.IN_CREATE | _C.IN_DELETE
    | _C.IN_MOVED_FROM | _C.IN_MOVED_TO | _C.IN_DELETE_SELF | _C.IN_MOVE_SELF | _C.IN_ONLYDIR
)
_CALLBACK_ID = CallbackId(1)
_TARGET_ID = CallbackId(2)  # the watch on a symbolic link's target (which may share a directory)
# What changes a directory's entries (a symbolic link made, replaced or removed) rather than a file.
_ENTRY_CHANGES = (
    _C.IN_CREATE | _C.IN_DELETE | _C.IN_MOVED_FROM | _C.IN_MOVED_TO | _C.IN_DELETE_SELF
    | _C.IN_MOVE_SELF | _C.IN_Q_OVERFLOW
)


class _Wake(FileSystemEventHandler):
    """Sets ``wake`` for any event about the log or its rotated siblings; nothing else (polling)."""

    def __init__(self, name: str, wake: Wakeup) -> None:
        self._name = name
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, event.dest_path):
            if path and os.path.basename(os.fsdecode(path)).startswith(self._name):
                self._wake.set()
                return


class _InotifyWake:
    """watchdog's inotify callback: sets ``wake`` for an event about the log or its rotated
    siblings, when events were lost, and when the directory itself went away (``lost`` is then
    called, so that the directory is watched again once it exists)."""

    def __init__(self, name: str, wake: Wakeup, lost: Any, moved: Any = None) -> None:
        self._name = os.fsencode(name)
        self._wake = wake
        self._lost = lost
        self._moved = moved  # called when an entry of the log's own name may have changed

    def on_event(self, event: InotifyEvent) -> None:
        if event.name.startswith(self._name) or not event.name:  # no name: the directory itself
            if self._moved is not None and event.mask & _ENTRY_CHANGES and event.name in (self._name, b""):
                self._moved()
            self._wake.set()

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        self._lost(wd)
        self._wake.set()

    def on_queue_overflow(self) -> None:
        if self._moved is not None:
            self._moved()
        self._wake.set()


_WAKING_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
]


class DirectoryWatch:
    """Sets ``wake`` when something may have changed near the log: watchdog's inotify reader, or
    its polling observer for NFS. A directory that cannot be watched yet (it does not exist) is
    retried at every :meth:`ensure`; meanwhile the reader's periodic re-check is the only wake-up.

    When the log's path is a symbolic link, inotify also watches the directory of the file it
    points to: a write to that file makes an event there, none in the link's directory."""

    def __init__(self, path: Path, wake: Wakeup, *, poll: bool, timeout: float, logger: Any) -> None:
        self._path = path
        self._wake = wake
        self._poll = poll
        self._timeout = timeout
        self._log = logger
        self._observer: BaseObserver | None = None  # polling
        self._watch: ObservedWatch | None = None
        self._inotify: InotifyFD | None = None
        self._wd: WatchDescriptor | None = None
        self._target: tuple[str, str] | None = None  # a symbolic link's target: (directory, name)
        self._target_wd: WatchDescriptor | None = None
        # The path's entry may have changed (made, replaced: a link pointed elsewhere): look up
        # its target at the next ensure(). Not at every one: a look per line would pay an lstat.
        self._resolve = True
        self._failed = False

    def start(self) -> None:
        """Start watching (inotify, or polling for NFS) the directory, if it can be now."""
        if self._poll:
            self._observer = PollingObserver(timeout=self._timeout)
            self._observer.daemon = True
            self._observer.start()
        else:
            self._inotify = InotifyFD()  # one of its own, not watchdog's shared instance
            self._inotify.daemon = True
            self._inotify.name = "jobcompd-inotify"
            self._inotify.start()
        self.ensure()

    def ensure(self) -> None:
        """Watch the directory, if it is not watched yet and can be now; with inotify, and the log's
        path a symbolic link, the directory of its target too (looked up again once an event says
        the path's entry changed: the link may have been pointed elsewhere)."""
        directory = self._path.parent
        try:
            if self._inotify is not None:
                if self._wd is None:
                    callback = _InotifyWake(self._path.name, self._wake, self._lost, self._moved)
                    self._wd = self._inotify.add_callback(
                        os.fsencode(directory), _INOTIFY_MASK, callback, _CALLBACK_ID
                    )
                    self._resolve = True
                if self._resolve or (self._target is not None and self._target_wd is None):
                    self._resolve = False
                    target = _link_target(self._path)
                    if target != self._target or self._target_wd is None:
                        self._unwatch_target()
                        self._target = target
                        if target is not None:
                            directory = Path(target[0])
                            callback = _InotifyWake(target[1], self._wake, self._lost)
                            self._target_wd = self._inotify.add_callback(
                                os.fsencode(target[0]), _INOTIFY_MASK, callback, _TARGET_ID
                            )
            elif self._observer is not None and self._watch is None:
                self._watch = self._observer.schedule(
                    _Wake(self._path.name, self._wake), str(directory),
                    recursive=False, event_filter=_WAKING_EVENTS,
                )
            else:
                return
            self._failed = False
        except OSError as exc:
            if not self._failed:
                self._failed = True
                self._log.warning("cannot watch the log directory yet: polling it",
                                  path=str(directory), error=str(exc))

    @property
    def watching(self) -> bool:
        """Whether inotify watches every directory a change to the log shows in now (every change
        near the log is an event)."""
        return (
            self._inotify is not None
            and self._wd is not None
            and (self._target is None or self._target_wd is not None)
        )

    def _moved(self) -> None:
        self._resolve = True

    def _unwatch_target(self) -> None:
        wd, self._target_wd = self._target_wd, None
        if wd is not None and self._inotify is not None:
            self._inotify.remove_callbacks([(wd, _TARGET_ID)])

    def _lost(self, wd: WatchDescriptor) -> None:
        # One watch may serve both (a link to another name in its own directory).
        if wd == self._wd:
            self._wd = None
        if wd == self._target_wd:
            self._target_wd = None

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        observer, self._observer = self._observer, None
        inotify, self._inotify = self._inotify, None
        self._watch = self._wd = self._target_wd = self._target = None
        for thread in (observer, inotify):
            if thread is not None:
                thread.stop()
                thread.join(timeout=10)

