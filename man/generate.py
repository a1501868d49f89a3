"""Write man/jobcompd.8 and man/jobcompd.toml.5 from their sources, so they cannot drift.

jobcompd(8) comes from the argument parser (every subcommand, option and help text, as ``--help``
shows them); jobcompd.toml(5) from the annotated etc/jobcompd.toml (every key with the comment
above it, and its default). ``python man/generate.py`` rewrites both; tests/test_man.py fails when
the committed pages differ from what this writes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobcompd import __version__  # noqa: E402
from jobcompd.cli import build_parser  # noqa: E402
from jobcompd.config import _SECTIONS  # noqa: E402

DATE = "2026-11-28"  # of the page's text; bump when it changes


def esc(text: str) -> str:
    """Text as roff: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_of(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return choice.help or ""
    return ""


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            names = ", ".join(f"\\fB{esc(o)}\\fR" for o in action.option_strings)
            if action.nargs != 0:
                names += f" \\fI{esc(action.metavar or action.dest.upper())}\\fR"
        else:
            names = f"\\fI{esc(str(action.metavar or action.dest))}\\fR"
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += f" (default: {action.default})"
        out += [".TP", names, esc(text)]
    return out


def _command(name: str, parser: argparse.ArgumentParser, parent: argparse.ArgumentParser) -> list[str]:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    about = parser.description or _help_of(parent, name)
    out = [".SS " + esc(name), ".nf", esc(" ".join(usage.split())), ".fi", ".PP", esc(about)]
    out += _options(parser)
    for action, sub in _subcommands(parser).items():
        out += [".TP", f"\\fB{esc(action)}\\fR", esc(_help_of(parser, action))]
        out += [".RS"] + _options(sub) + [".RE"]
    return out


def jobcompd_8() -> str:
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "1000"  # usage lines unwrapped, whatever the terminal
    try:
        return _jobcompd_8(build_parser())
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def _jobcompd_8(parser: argparse.ArgumentParser) -> str:
    lines = [
        f'.TH JOBCOMPD 8 "{DATE}" "jobcompd {__version__}" "System Administration"',
        ".SH NAME",
        "jobcompd \\- ship Slurm job completion records to Kafka as the jobcomp/kafka plugin's JSON",
        ".SH SYNOPSIS",
        ".B jobcompd",
        "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        esc(
            "jobcompd follows the jobcomp/filetxt log that slurmctld writes (JobCompLoc), turns "
            "each finished job into exactly the JSON message the jobcomp/kafka plugin would send, "
            "and produces it to Kafka. Every record read is either acknowledged by Kafka or held "
            "in its state (the spool, the dead letters, the quarantine) with a reason; the read "
            "position moves only with what is durably held. It runs as a systemd service "
            "(jobcompd run), and its other commands inspect and repair that state."
        ),
        ".SH COMMANDS",
    ]
    for name, sub in _subcommands(parser).items():
        lines += _command(name, sub, parser)
    lines += [
        ".SH EXIT STATUS",
        ".TP", "0", "success; for \\fBstatus\\fR: OK",
        ".TP", "1", esc("some lines were quarantined or records not delivered (parse, replay), a "
                        "file the service needs cannot be used or the brokers do not answer "
                        "(check-config); for status: WARNING"),
        ".TP", "2", esc("usage, configuration or state errors (nothing was done); for status: CRITICAL"),
        ".TP", "3", esc("status only: UNKNOWN (the configuration or the state cannot be read)"),
        ".SH SIGNALS",
        ".TP", "SIGTERM, SIGINT", esc("stop: finish the batch being read, wait up to flush_timeout "
                                      "for deliveries, keep the rest in the spool"),
        ".TP", "SIGHUP", esc("reload the configuration; a configuration with errors is refused "
                             "and the running one kept (source.* and state.dir need a restart)"),
        ".SH ENVIRONMENT",
        ".TP", "JOBCOMPD_CONFIG", "the configuration file when \\fB\\-c\\fR is not given",
        ".TP", "TZ", esc("the zone of the log's times when source.timezone is not set, as for slurmctld"),
        ".SH FILES",
        ".TP", "/etc/jobcompd/jobcompd.toml", "the configuration, see \\fBjobcompd.toml\\fR(5)",
        ".TP", "/etc/jobcompd/rdkafka.conf", esc("librdkafka properties, in the plugin's format"),
        ".TP", "/var/lib/jobcompd/jobcompd.db", esc("the state (SQLite): spool, dead letters, "
                                                    "quarantine, read positions, known record ids"),
        ".TP", "/var/lib/jobcompd/health.json", esc("the daemon's own report, read by status"),
        ".TP", "/run/jobcompd/status.json", esc("the report for a monitoring user, when status.file is set"),
        ".SH SEE ALSO",
        "\\fBjobcompd.toml\\fR(5), \\fBslurm.conf\\fR(5), \\fBslurmctld\\fR(8), \\fBlogrotate\\fR(8)",
    ]
    return "\n".join(lines) + "\n"


_KEY = re.compile(r"^#?\s?([a-z_]+)\s*=\s*(.*)$")
_TABLE = re.compile(r"^#?\s?\[([a-z_.]+)\]\s*$")


def _keys_from_example(text: str) -> tuple[list[str], list[tuple[str, str, str, list[str]]]]:
    """The file's header comment, and (table, key, example value, comment lines) of every key."""
    header: list[str] = []
    keys: list[tuple[str, str, str, list[str]]] = []
    table = ""
    comment: list[str] = []
    in_header = True
    for raw in text.splitlines():
        line = raw.rstrip()
        if in_header:
            if line.startswith("#"):
                header.append(line.lstrip("#").strip())
                continue
            in_header = False
        if not line:
            comment = [] if not table and not keys else comment
            continue
        if m := _TABLE.match(line):
            parent, _, sub = m.group(1).rpartition(".")
            if parent and sub in _SECTIONS.get(parent, ()):  # [kafka.properties]: a key that is a table
                keys.append((parent, sub, f"[{m.group(1)}] table", comment))
            table = m.group(1)
            comment = []
            continue
        m = _KEY.match(line)
        known = _SECTIONS.get(table, ()) if table else ("slurm_conf",)
        if m and (m.group(1) in known or (table == "" and m.group(1) == "slurm_conf")):
            keys.append((table, m.group(1), m.group(2), comment))
            comment = []
            continue
        if line.startswith("#"):
            comment.append(line[1:].removeprefix(" "))
    return header, keys


def jobcompd_toml_5() -> str:
    header, keys = _keys_from_example((ROOT / "etc" / "jobcompd.toml").read_text())
    lines = [
        f'.TH JOBCOMPD.TOML 5 "{DATE}" "jobcompd {__version__}" "File Formats"',
        ".SH NAME",
        "jobcompd.toml \\- configuration of jobcompd",
        ".SH DESCRIPTION",
        esc(" ".join(h for h in header if h and not h.startswith("jobcompd configuration"))),
        ".PP",
        esc("The keys below, table by table, with the comment the annotated example carries and its "
            "value there (commented out in the example: not set by default)."),
    ]
    current = None
    for table, key, value, comment in keys:
        if table != current:
            current = table
            lines += [".SH " + (f"[{esc(table)}]" if table else "TOP LEVEL")]
        lines += [".TP", f"\\fB{esc(key)}\\fR = {esc(value)}"]
        body = [c for c in comment if c.strip()]
        if body:
            lines += [".nf", *(esc(c) for c in body), ".fi"]
    lines += [
        ".SH FILES",
        ".TP", "/etc/jobcompd/jobcompd.toml", "the default location (or \\fB\\-c\\fR, or $JOBCOMPD_CONFIG)",
        ".SH SEE ALSO",
        "\\fBjobcompd\\fR(8), \\fBslurm.conf\\fR(5)",
    ]
    return "\n".join(lines) + "\n"


PAGES = {"jobcompd.8": jobcompd_8, "jobcompd.toml.5": jobcompd_toml_5}


def main() -> None:
    for name, build in PAGES.items():
        (ROOT / "man" / name).write_text(build())
        print(f"wrote man/{name}")


if __name__ == "__main__":
    main()
