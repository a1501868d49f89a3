"""The man pages are generated from --help and the annotated example, and say everything."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from types import ModuleType

from jobcompd.cli import build_parser
from jobcompd.config import _SECTIONS

ROOT = Path(__file__).resolve().parent.parent


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("man_generate", ROOT / "man" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_pages_are_what_the_generator_writes() -> None:
    gen = generator()
    for name, build in gen.PAGES.items():
        assert (ROOT / "man" / name).read_text() == build(), f"run: python man/generate.py ({name})"


def plain(roff: str) -> str:
    for font in ("\\fB", "\\fI", "\\fR"):
        roff = roff.replace(font, "")
    return roff.replace("\\-", "-").replace("\\e", "\\")


def options(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, str]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((path, name))
                found += options(sub, f"{path} {name}".strip())
        elif not isinstance(action, argparse._HelpAction):
            found += [(path, o) for o in action.option_strings]
    return found


def test_every_command_and_option_is_in_jobcompd_8() -> None:
    page = plain((ROOT / "man" / "jobcompd.8").read_text())
    everything = options(build_parser())
    assert len(everything) > 30
    for where, option in everything:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", page), (where, option)
    for signal in ("SIGTERM", "SIGHUP"):
        assert signal in page
    assert ".SH EXIT STATUS" in page and ".SH FILES" in page


def test_every_key_is_in_the_example_and_in_jobcompd_toml_5() -> None:
    page = plain((ROOT / "man" / "jobcompd.toml.5").read_text())
    example = (ROOT / "etc" / "jobcompd.toml").read_text()
    _, keys = generator()._keys_from_example(example)
    documented = {(table, key) for table, key, _, _ in keys}
    for table, names in _SECTIONS.items():
        assert f".SH [{table}]" in page, table
        for key in names:
            assert (table, key) in documented, f"{table}.{key} is not in etc/jobcompd.toml"
            assert re.search(rf"^\.TP\n{key} = ", page, re.MULTILINE), f"{table}.{key}"
    assert ("", "slurm_conf") in documented
