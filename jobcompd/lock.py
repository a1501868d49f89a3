"""One jobcompd per state directory: an exclusive ``flock`` on ``<state_dir>/jobcompd.lock``."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["StateDirBusy", "StateDirLock", "StateDirUnusable"]


class StateDirUnusable(RuntimeError):
    """The state directory cannot be locked (missing permissions, read-only file system, …)."""


class StateDirBusy(StateDirUnusable):
    """Another jobcompd process holds the state directory."""


class StateDirLock:
    """Held for the life of a process that writes the state (the daemon, ``replay``)."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / "jobcompd.lock"
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateDirUnusable(
                f"cannot use the state directory {self.path.parent}: {exc.strerror} "
                "(it must be writable by jobcompd: check the mount, permissions and state.dir)"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirBusy(
                f"{self.path.parent} is in use by another jobcompd (pid {holder}); "
                "stop it first, or use another state.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def holder(self) -> int | None:
        """The pid of the process holding the lock, or ``None`` when it is free."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
