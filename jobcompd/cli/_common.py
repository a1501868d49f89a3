"""What every subcommand shares: exit codes, loading the configuration, opening the state."""

from __future__ import annotations

import argparse
import signal
import sys

from jobcompd.config import ConfigError, Settings, load_settings
from jobcompd.state import State, StateError
from jobcompd.wakeup import Wakeup

EXIT_OK = 0
EXIT_SOME_BAD = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _settings(args: argparse.Namespace) -> Settings | None:
    """Load the configuration, or print every problem (file, key or line, reason) and give up."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"jobcompd: {problem}", file=sys.stderr)
        return None
    except OSError as exc:
        print(f"jobcompd: {exc}", file=sys.stderr)
        return None
    return settings


def _open_state(settings: Settings, *, readonly: bool = False) -> State | None:
    try:
        return State.open(settings.state.dir, synchronous=settings.state.synchronous, readonly=readonly)
    except StateError as exc:
        print(f"jobcompd: {exc}", file=sys.stderr)
        return None


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help="configuration file (default: $JOBCOMPD_CONFIG or /etc/jobcompd/jobcompd.toml)",
    )


def _stop_on_signals() -> Wakeup:
    stop = Wakeup()  # set in a signal handler: it must take no lock (see jobcompd.wakeup)

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
