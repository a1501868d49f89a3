"""The time zone of the log's times: one set of rules for ``run``, ``replay``, ``parse`` and the
parse worker.

slurmctld writes local wall-clock times (``localtime_r()``), so the zone is the one slurmctld
runs in: ``source.timezone`` when set, else the system zone, found as glibc finds it — ``TZ``
(an IANA name, or a path to a zone file; set but empty means UTC), else ``/etc/localtime``
(named from where it links into a zoneinfo tree, or from ``/etc/timezone``), else UTC.

A zone with no IANA name (a zone file outside any zoneinfo tree) is kept with its bytes, so a
:class:`Zone` handed to another process (:attr:`Zone.spec`) is rebuilt there as the same zone —
never looked up again under a name that means something else there.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

__all__ = ["LOCAL", "TimeZoneError", "Zone", "ZoneSpec", "named", "resolve", "system_zone"]

LOCAL = "localtime"
"""The name of a system zone that has no IANA name."""

ZoneSpec = tuple[str, bytes | None]
"""``(name, zone file bytes or None)``: a :class:`Zone` as plain values (marshal, pickle)."""


class TimeZoneError(ValueError):
    """The zone asked for is not a known IANA name, or the system zone cannot be used."""


@dataclass(frozen=True)
class Zone:
    """A time zone: its IANA name (or :data:`LOCAL`), the tzinfo, and the zone file's bytes when
    it has no IANA name."""

    name: str
    tz: ZoneInfo = field(compare=False, repr=False)
    tzif: bytes | None = field(default=None, repr=False)

    @property
    def spec(self) -> ZoneSpec:
        """This zone as plain values, for :meth:`from_spec` in another process."""
        return self.name, self.tzif

    @classmethod
    def from_spec(cls, spec: ZoneSpec) -> Zone:
        """The zone :attr:`spec` describes."""
        name, tzif = spec
        if tzif is not None:
            return cls(name, ZoneInfo.from_file(io.BytesIO(tzif), key=name), tzif)
        zone = named(name)
        if zone is None:
            raise TimeZoneError(f"unknown time zone {name!r}")
        return zone


def named(name: str) -> Zone | None:
    """The IANA zone ``name``, or None if there is no such zone."""
    try:
        return Zone(name, ZoneInfo(name))
    except (KeyError, ValueError, OSError, UnicodeError):  # KeyError: ZoneInfoNotFoundError
        return None


def _from_file(path: str) -> Zone:
    with open(path, "rb") as file:
        tzif = file.read()
    return Zone(LOCAL, ZoneInfo.from_file(io.BytesIO(tzif), key=LOCAL), tzif)


def _zone_key(path: str) -> str | None:
    """``Europe/Berlin`` for ``/usr/share/zoneinfo/Europe/Berlin`` (after symlinks)."""
    real = os.path.realpath(path)
    marker = "/zoneinfo/"
    if marker not in real:
        return None
    key = real.split(marker, 1)[1]
    for prefix in ("posix/", "right/"):
        key = key.removeprefix(prefix)
    return key if named(key) is not None else None


def system_zone(
    environ: Mapping[str, str] | None = None,
    localtime: str = "/etc/localtime",
    timezone_file: str = "/etc/timezone",
) -> Zone | str:
    """The system zone (see the module's docstring), or why it cannot be had."""
    environ = os.environ if environ is None else environ
    utc = Zone("UTC", ZoneInfo("UTC"))
    if "TZ" in environ:
        spec = environ["TZ"].removeprefix(":")
        if not spec:  # glibc: TZ set but empty means UTC
            return utc
        if spec.startswith("/"):
            key = _zone_key(spec)
            if key is not None:
                return named(key) or utc
            try:
                return _from_file(spec)
            except (OSError, ValueError) as exc:
                return f"TZ={environ['TZ']} cannot be read as a zone file: {exc}"
        zone = named(spec)
        if zone is None:
            return f"TZ={environ['TZ']} is not an IANA zone name (POSIX TZ rules are not supported)"
        return zone
    if not os.path.lexists(localtime):  # glibc falls back to UTC
        return utc
    key = _zone_key(localtime)
    if key is not None:
        return named(key) or utc
    try:
        name = Path(timezone_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError):
        name = ""
    if name and (zone := named(name)) is not None:
        return zone
    try:
        return _from_file(localtime)
    except (OSError, ValueError) as exc:
        return f"{localtime} cannot be read as a zone file: {exc}"


def resolve(name: str | None, environ: Mapping[str, str] | None = None) -> Zone:
    """The zone ``name`` (IANA), or the system zone for None or :data:`LOCAL`.

    Raises :class:`TimeZoneError` with the reason when there is no such zone.
    """
    if name is not None and name != LOCAL:
        zone = named(name)
        if zone is None:
            raise TimeZoneError(f"{name!r} is not a known IANA time zone")
        return zone
    local = system_zone(environ)
    if isinstance(local, str):
        raise TimeZoneError(
            f"the system zone cannot be used ({local}); set the zone slurmctld writes its "
            'times in, e.g. "Europe/Berlin"'
        )
    return local
