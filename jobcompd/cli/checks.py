"""`jobcompd check-config`: the effective settings, the files as the service user, the brokers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

from jobcompd.cli._common import (
    EXIT_OK,
    EXIT_SOME_BAD,
    EXIT_USAGE,
    _settings,
)
from jobcompd.config import Settings, redacted


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE
    for warning in settings.warnings:
        print(f"jobcompd: warning: {warning}", file=sys.stderr)
    zone_warning = _zone_mismatch(settings)
    if zone_warning:
        print(f"jobcompd: warning: {zone_warning}", file=sys.stderr)
    view = redacted(settings)
    if args.json:
        print(json.dumps(view, indent=2, default=str))
    else:
        _print_tree(view)
    access = _check_access(settings, args.user, quiet=args.json)
    if access is None:
        return EXIT_USAGE
    if args.connect:
        from jobcompd.preflight import check_connection

        problems = check_connection(settings, timeout=args.timeout)
        for line in problems.report:
            print(line)
        if not problems.ok:
            return EXIT_SOME_BAD
    return EXIT_SOME_BAD if access else EXIT_OK


def _zone_mismatch(settings: Settings) -> str | None:
    """A warning when ``source.timezone`` is not the zone this system (and so slurmctld) runs in."""
    from jobcompd.zone import system_zone

    system = system_zone()
    if isinstance(system, str) or system == settings.source.zone:
        return None
    probe = [datetime(2024, 1, 15, 12), datetime(2024, 7, 15, 12)]
    if all(system.tz.utcoffset(t) == settings.source.zone.tz.utcoffset(t) for t in probe):
        return None  # another name for the same offsets (Etc/UTC and UTC)
    return (
        f"source.timezone: {settings.source.timezone!r} differs from this system's zone "
        f"{system.name!r}: slurmctld writes its times in its own zone, so unless it runs with "
        "TZ set to the first, every time will be shifted (comment source.timezone out to use "
        "the system's)"
    )


def _check_access(settings: Settings, user: str | None, *, quiet: bool) -> bool | None:
    """Print what the service user cannot use; True if anything stops it, None on a usage error."""
    from jobcompd.access import User, check_paths, check_paths_as

    if user is not None and os.geteuid() != 0:
        print("jobcompd check-config: --user needs root (it checks as that user)", file=sys.stderr)
        return None
    try:
        who = User.named(user) if user is not None else User.current()
    except KeyError:
        print(f"jobcompd check-config: no such user: {user}", file=sys.stderr)
        return None
    try:
        findings = check_paths_as(settings, who) if user is not None else check_paths(settings, who)
    except (OSError, RuntimeError) as exc:
        print(f"jobcompd check-config: {exc}", file=sys.stderr)
        return None
    for finding in findings:
        print(f"jobcompd: {finding.render(who)}", file=sys.stderr)
    if not any(f.level == "error" for f in findings):
        if not quiet:
            print(f"ok   files: the log, the rdkafka properties and the state dir are usable by {who.name}")
        return False
    return True


def _print_tree(view: dict[str, Any], prefix: str = "") -> None:
    for key, value in view.items():
        if isinstance(value, dict):
            _print_tree(value, f"{prefix}{key}.")
        else:
            print(f"{prefix}{key} = {json.dumps(value, default=str)}")
