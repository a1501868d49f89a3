"""Can the service user use what the configuration names? Checked as that user, with the fix.

``check-config`` runs these checks as the current user, or as ``--user NAME`` (root only: a child
process drops to that user's ids and groups, so the kernel answers, not a guess from mode bits).
The log is judged by :func:`jobcompd.logfile.log_problem`, as the tailer judges it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from jobcompd.config import Settings
from jobcompd.logfile import log_problem, nearest_existing

__all__ = ["Finding", "User", "check_paths", "check_paths_as"]


@dataclass(frozen=True)
class User:
    """Who the checks are for: name, primary group and ids."""

    name: str
    group: str
    uid: int
    gid: int

    @classmethod
    def named(cls, name: str) -> User:
        entry = pwd.getpwnam(name)
        return cls(name, _group_name(entry.pw_gid), entry.pw_uid, entry.pw_gid)

    @classmethod
    def current(cls) -> User:
        uid, gid = os.getuid(), os.getgid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, _group_name(gid), uid, gid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@dataclass(frozen=True)
class Finding:
    """One problem: ``error`` stops the service from working, ``warning`` may."""

    level: str
    key: str
    path: str
    problem: str
    fix: str = ""

    def render(self, user: User) -> str:
        text = f"{self.level}: {self.key}: {self.path}: {self.problem} (as user {user.name})"
        return f"{text}\n    fix: {self.fix}" if self.fix else text


def _read_fix(path: Path, user: User) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"make {path} readable by {user.name}"
    mode = "g+rx" if stat.S_ISDIR(st.st_mode) else "g+r"
    if st.st_gid != user.gid:
        return f"chgrp {user.group} {path} && chmod {mode} {path}"
    return f"chmod {mode} {path}"


def check_paths(settings: Settings, user: User) -> list[Finding]:
    """The checks, as the calling process (which must run as ``user``)."""
    found: list[Finding] = []
    log = settings.source.path
    problem = log_problem(log)
    if problem is not None:
        fix = "" if problem.blocked is None else _read_fix(problem.blocked, user)
        found.append(Finding("error", "source.path", str(log), problem.reason, fix))
    elif not os.path.lexists(log):
        found.append(Finding("warning", "source.path", str(log),
                             "does not exist yet (jobcompd waits for slurmctld to write it)"))
    conf = settings.kafka.rdkafka_conf
    if conf is not None:
        try:
            with open(conf, "rb"):
                pass
        except PermissionError:
            found.append(Finding("error", "kafka.rdkafka_conf", str(conf),
                                 "cannot be read (permission denied)", _read_fix(conf, user)))
        except OSError as exc:
            found.append(Finding("error", "kafka.rdkafka_conf", str(conf), f"cannot be read: {exc.strerror}"))
    found += _state_dir(settings.state.dir, user)
    return found


def _state_dir(directory: Path, user: User) -> list[Finding]:
    owner = f"{user.name}:{user.group}"
    if os.path.exists(directory):
        if not directory.is_dir():
            return [Finding("error", "state.dir", str(directory), "is not a directory")]
        if not os.access(directory, os.W_OK | os.X_OK | os.R_OK):
            return [Finding("error", "state.dir", str(directory), "is not writable (permission denied)",
                            f"chown -R {owner} {directory} && chmod 0700 {directory}")]
        for name in ("jobcompd.db", "jobcompd.db-wal", "jobcompd.lock"):
            file = directory / name
            if os.path.exists(file) and not os.access(file, os.R_OK | os.W_OK):
                return [Finding("error", "state.dir", str(file), "is not writable (permission denied)",
                                f"chown -R {owner} {directory}")]
        return []
    parent = nearest_existing(directory)
    if not os.access(parent, os.W_OK | os.X_OK):
        return [Finding("error", "state.dir", str(directory),
                        f"does not exist and cannot be created ({parent} is not writable)",
                        f"install -d -o {user.name} -g {user.group} -m 0700 {directory}")]
    return []


def check_paths_as(settings: Settings, user: User) -> list[Finding]:
    """The checks as ``user``, in a child process that has dropped to its ids (root only)."""
    if os.getuid() == user.uid:
        return check_paths(settings, user)
    if os.geteuid() != 0:
        raise PermissionError("checking as another user needs root")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, check, answer, leave without cleanup
        code = 0
        try:
            os.close(read)
            try:
                os.initgroups(user.name, user.gid)
                os.setgid(user.gid)
                os.setuid(user.uid)
                answer: object = [asdict(f) for f in check_paths(settings, user)]
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write, "wb") as out:
                out.write(json.dumps(answer).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as answers:
        data = answers.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not data:
        raise RuntimeError(f"the check as user {user.name} failed")
    told = json.loads(data)
    if isinstance(told, dict):
        raise RuntimeError(f"the check as user {user.name} failed: {told['error']}")
    return [Finding(**f) for f in told]
