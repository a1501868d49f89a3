"""The watch on the log's directory: watchdog events only wake the reader (they are hints).

With inotify, the reader waits for watchdog's inotify reader (``InotifyFD``) itself: its
descriptor is polled beside the reader's wake-up (:meth:`Wakeup.watch`), and its events are read
and matched by the reader's own thread, as it waits or before it looks. watchdog's ``Observer``
would pass each event through three threads (the inotify reader, an emitter that builds event
objects, a dispatcher that calls handlers): at a thousand lines a second that was a quarter of the
daemon's CPU and three thread hand-offs on the way from a write to the read; ``InotifyFD``'s own
thread alone was one hand-off, a tenth of a millisecond at the median. With ``poll`` (NFS),
watchdog's ``PollingObserver`` compares directory snapshots on its thread, which sets the wake-up.
"""

from __future__ import annotations

import errno
import os
import struct
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
    DEFAULT_EVENT_BUFFER_SIZE,
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


class _InotifyHere(InotifyFD):
    """watchdog's inotify reader without its thread: :meth:`dispatch` reads and serves the events
    queued, when the caller's ``poll()`` says its descriptor (:meth:`fileno`) is readable."""

    def __init__(self) -> None:
        super().__init__()
        self._is_reading = False  # no thread of its own reads it: close() closes it at once
        os.set_blocking(self._inotify_fd, False)

    def fileno(self) -> int:
        return self._inotify_fd

    def dispatch(self, written: bytes, wake: Wakeup) -> None:
        """Read the events queued and serve each as watchdog's thread does (``handle_event``) —
        except when they are all ``written``, the event of a write to the log (what a live log
        makes, once per line): they only set ``wake``, without an object made for each."""
        if self._closed:
            return
        try:
            buffer = os.read(self._inotify_fd, DEFAULT_EVENT_BUFFER_SIZE)
        except BlockingIOError:
            return  # nothing queued after all
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return  # closed meanwhile (stopping)
            raise
        if written and buffer == written * (len(buffer) // len(written)):
            wake.set_in_wait()
            return
        for wd, mask, cookie, name in self._parse_event_buffer(buffer):
            # (as watchdog's read_events(): the kernel's other events without a watch are ignored)
            if wd != -1 or mask & _C.IN_Q_OVERFLOW:
                self.handle_event(InotifyEvent(wd, mask, cookie, name))


def _write_event(wd: int, name: bytes) -> bytes:
    """The bytes of inotify's event for a write to the file ``name`` in the directory watched as
    ``wd``: ``struct inotify_event`` and the name, padded with NULs to a multiple of its 16 bytes,
    as the kernel pads it (another padding only makes every event take the general way)."""
    size = (len(name) + 1 + 15) // 16 * 16
    return struct.pack("iIII", wd, _C.IN_MODIFY, 0, size) + name.ljust(size, b"\0")


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

    def on_event(self, event: InotifyEvent) -> None:  # (served by the reader, as it waits)
        if event.name.startswith(self._name) or not event.name:  # no name: the directory itself
            if self._moved is not None and event.mask & _ENTRY_CHANGES and event.name in (self._name, b""):
                self._moved()
            self._wake.set_in_wait()

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        self._lost(wd)
        self._wake.set()

    def on_queue_overflow(self) -> None:  # (served by the reader, as it waits)
        if self._moved is not None:
            self._moved()
        self._wake.set_in_wait()


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
        self._inotify: _InotifyHere | None = None
        self._wd: WatchDescriptor | None = None
        self._written = b""  # inotify's event for a write to the log (_write_event), once watched
        self._target: tuple[str, str] | None = None  # a symbolic link's target: (directory, name)
        self._target_wd: WatchDescriptor | None = None
        # The path's entry may have changed (made, replaced: a link pointed elsewhere): look up
        # its target at the next ensure(). Not at every one: a look per line would pay an lstat.
        self._resolve = True
        self._failed = False

    def start(self) -> None:
        """Start watching (inotify, or polling for NFS) the directory, if it can be now."""
        if self._poll:
            self._start_polling()
        else:
            self._inotify = _InotifyHere()  # one of its own, not watchdog's shared instance
            self._wake.watch(self._inotify.fileno(), self._dispatch)
        self.ensure()

    def _dispatch(self) -> None:
        """Serve inotify's events (the reader's thread, as it waits: :meth:`Wakeup.watch`)."""
        inotify = self._inotify
        if inotify is None:
            return
        try:
            inotify.dispatch(self._written, self._wake)
        except OSError as exc:
            # (Never seen.) Its descriptor would stay readable, and each wait would fail again at
            # once: a loop of failed reads and warnings. The directory is watched by polling from
            # now on, as on NFS, and the log looked at now.
            self._log.warning("cannot read inotify's events: watching the log directory by "
                              "polling from now on", path=str(self._path.parent), error=str(exc))
            self._to_polling()
            self._wake.set()

    def _to_polling(self) -> None:
        """Let inotify go, and watch the directory with watchdog's polling observer instead."""
        inotify, self._inotify = self._inotify, None
        self._wd = self._target_wd = self._target = None
        self._written = b""
        if inotify is not None:
            self._wake.unwatch(inotify.fileno())
            inotify.close()
        self._poll = True
        self._start_polling()
        self.ensure()

    def _start_polling(self) -> None:
        self._observer = PollingObserver(timeout=self._timeout)
        self._observer.daemon = True
        self._observer.start()

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
                    self._written = _write_event(self._wd, os.fsencode(self._path.name))
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
            self._written = b""
        if wd == self._target_wd:
            self._target_wd = None

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        observer, self._observer = self._observer, None
        inotify, self._inotify = self._inotify, None
        self._watch = self._wd = self._target_wd = self._target = None
        self._written = b""
        if inotify is not None:
            self._wake.unwatch(inotify.fileno())
            inotify.close()
        if observer is not None:
            observer.stop()
            observer.join(timeout=10)

