"""slurm.conf: the few keys jobcompd takes defaults from (ClusterName, JobCompType/Loc, StateSaveLocation)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from jobcompd.config.params import _WHITESPACE
from jobcompd.config.settings import SlurmConf

_SLURM_PAIR = re.compile(r'([A-Za-z0-9_.]+)\s*=\s*(?:"([^"]*)"|(\S*))')

_SLURM_INCLUDE = re.compile(r"\s*include\s+(\S.*)", re.IGNORECASE)

_SLURM_RECORDS = frozenset({"nodename", "partitionname", "nodeset", "downnodes", "frontendname"})

_SLURM_WANTED = {
    "clustername": "cluster_name",
    "jobcomptype": "job_comp_type",
    "jobcomploc": "job_comp_loc",
    "statesavelocation": "state_save_location",
}


def _slurm_lines(text: str) -> Iterator[tuple[int, str]]:
    """Logical lines with their first line number: comments cut, backslash continuations joined."""
    pending = ""
    start = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not pending:
            start = lineno
        cut = re.search(r"(?<!\\)#", line)
        line = (line[: cut.start()] if cut else line).replace("\\#", "#").rstrip(_WHITESPACE)
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def _parse_slurm_conf(text: str, path: Path) -> tuple[SlurmConf, list[tuple[str, str]]]:
    """The values jobcompd wants, and notes (where, reason) about what was not read."""
    found: dict[str, str] = {}
    notes: list[tuple[str, str]] = []
    for lineno, line in _slurm_lines(text):
        include = _SLURM_INCLUDE.fullmatch(line)
        if include:
            reason = (
                f"Include {include.group(1).strip()} is not read; if it sets ClusterName, "
                "JobCompType, JobCompLoc or StateSaveLocation, set the jobcompd.toml "
                "equivalents instead"
            )
            notes.append((f"line {lineno}", reason))
            continue
        pairs = [
            (m.group(1), m.group(2) if m.group(2) is not None else m.group(3))
            for m in _SLURM_PAIR.finditer(line)
        ]
        if not pairs or pairs[0][0].lower() in _SLURM_RECORDS:
            continue
        for key, value in pairs:
            name = _SLURM_WANTED.get(key.lower())
            if name is not None:
                found[name] = value.strip(_WHITESPACE)
    values: dict[str, str | None] = {name: (found.get(name) or None) for name in found}
    if values.get("cluster_name"):
        values["cluster_name"] = cast(str, values["cluster_name"]).lower()
    return SlurmConf(path=path, **values), notes
