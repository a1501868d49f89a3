"""`jobcompd deadletter` and `jobcompd quarantine`: list, retry and purge what the state holds."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from jobcompd.cli._common import (
    EXIT_OK,
    EXIT_SOME_BAD,
    EXIT_USAGE,
    _config_arg,
    _open_state,
    _Parser,
    _settings,
)
from jobcompd.config import Settings
from jobcompd.state import State


def _listing(
    args: argparse.Namespace,
    settings: Settings,
    fetch: Callable[[State], Sequence[Any]],
    as_json: Callable[[Any], dict[str, Any]],
    as_text: Callable[[Any], str],
    noun: str,
) -> int:
    """``deadletter list`` and ``quarantine list``: rows read-only, as JSON or text."""
    state = _open_state(settings, readonly=True)
    if state is None:
        return EXIT_USAGE
    with state:
        rows = fetch(state)
    if args.json:
        print(json.dumps([as_json(row) for row in rows]))
    else:
        for row in rows:
            print(as_text(row))
        print(f"{len(rows)} {noun}", file=sys.stderr)
    return EXIT_OK


def _chosen(args: argparse.Namespace, settings: Settings, given: Sequence[Any], what: str
            ) -> tuple[State, list[Any] | None] | None:
    """The state opened for writing and the ids an action names (None: ``--all``), or None
    after saying why not."""
    if not args.all and not given:
        print(f"jobcompd {args.command} {args.action}: name {what}, or --all", file=sys.stderr)
        return None
    state = _open_state(settings)
    return None if state is None else (state, None if args.all else list(given))


def _cmd_deadletter(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE
    if args.action == "list":
        return _listing(
            args,
            settings,
            lambda state: state.dead_letters(limit=args.limit),
            lambda d: {
                "rid": d.rid,
                "jobid": d.jobid,
                "reason": d.reason,
                "failed_at": d.failed_at,
                "attempts": d.attempts,
                "source": d.source,
                "payload": d.payload.decode(errors="replace"),
            },
            lambda d: f"{d.rid}  job {d.jobid}  "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(d.failed_at))}  "
            f"attempts={d.attempts}  {d.reason}",
            "dead letter(s)",
        )
    chosen = _chosen(args, settings, args.rids, "record ids")
    if chosen is None:
        return EXIT_USAGE
    state, rids = chosen
    with state:
        if args.action == "retry":
            n = state.retry_dead_letters(rids)
            print(f"{n} dead letter(s) moved back to the spool; a running jobcompd sends them")
        else:
            n = state.purge_dead_letters(rids)
            print(f"{n} dead letter(s) purged (counted in the state's purged total)")
    return EXIT_OK


def _shown(raw: bytes, limit: int = 240) -> str:
    """A quarantined line as text that cannot disturb a terminal: control bytes and invalid UTF-8
    escaped, cut at ``limit`` characters."""
    text = raw.rstrip(b"\r\n").decode(errors="backslashreplace")
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[: limit + 1])
    return text if len(text) <= limit else f"{text[:limit]}… ({len(raw)} bytes)"


def _cmd_quarantine(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE
    if args.action == "list":
        return _listing(
            args,
            settings,
            lambda state: state.quarantined(limit=args.limit),
            lambda q: {"id": q.id, "source": q.source, "line_no": q.line_no, "offset": q.offset,
                       "reason": q.reason, "at": q.at,
                       "raw": q.raw.decode(errors="backslashreplace")},
            lambda q: f"{q.id}  {q.source}:{q.line_no} (byte {q.offset})  {q.reason}\n"
            f"    {_shown(q.raw)}",
            "quarantined line(s)",
        )
    chosen = _chosen(args, settings, args.ids, "line ids")
    if chosen is None:
        return EXIT_USAGE
    state, ids = chosen
    with state:
        if args.action == "purge":
            n = state.purge_quarantined(ids)
            print(f"{n} quarantined line(s) purged (counted in the state)")
            return EXIT_OK
        from jobcompd.ingest import Ingestor

        lines = state.quarantined_by_id(ids)
        ingestor = Ingestor.configured(state, settings.source, settings.cluster)
        try:
            result, released = ingestor.retry_quarantined(lines)
        finally:
            ingestor.close()
    print(f"{released} of {len(lines)} line(s) read as records now: {result.spooled} spooled "
          f"(a running jobcompd sends them), {result.already_known} already known")
    return EXIT_OK if released == len(lines) else EXIT_SOME_BAD


def _held_records_parser(
    sub: Any,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    noun: str,
    retry: str,
    ids: tuple[str, str, type],
) -> None:
    """``NAME list|retry|purge``: the commands for what the state holds aside (dead letters,
    quarantined lines)."""
    p = sub.add_parser(name, help=help, description=description)
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    q = actions.add_parser("list", help=f"show {noun}s and why")
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--json", action="store_true")
    dest, metavar, kind = ids
    for action, text in (("retry", retry), ("purge", f"drop {noun}s on purpose (counted)")):
        q = actions.add_parser(action, help=text)
        q.add_argument(dest, nargs="*", metavar=metavar, type=kind)
        q.add_argument("--all", action="store_true", help=f"every {noun}")
    for q in actions.choices.values():
        _config_arg(q)
    p.set_defaults(func=func)
