"""The one set of rules for the log's time zone, and the same zone in every reader.

Pins the two ways it went wrong when config and the encoder each had their own rules: a zone file
named by ``TZ`` outside a zoneinfo tree was read by config but looked up again by name in the
parse worker (so batches parsed there got other UTC times than small ones parsed in-process), and
``jobcompd parse`` read ``TZ`` differently from ``run``.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from jobcompd.config import load_settings
from jobcompd.encode import Encoder
from jobcompd.ingest import WORKER_MIN_LINES, Ingestor
from jobcompd.record import JobRecord, parse_line
from jobcompd.state import State
from jobcompd.zone import LOCAL, TimeZoneError, Zone, resolve, system_zone
from tests.slurmctld import mixed_lines


def tzif(name: str) -> bytes:
    return importlib.resources.files("tzdata.zoneinfo").joinpath(name).read_bytes()


def test_named_zones_and_the_reason_for_an_unknown_one() -> None:
    assert resolve("UTC") == Zone("UTC", ZoneInfo("UTC"))
    assert resolve("Europe/Berlin").tz is ZoneInfo("Europe/Berlin")
    with pytest.raises(TimeZoneError, match="'Mars/Olympus' is not a known IANA time zone"):
        resolve("Mars/Olympus")
    with pytest.raises(TimeZoneError, match="POSIX TZ rules are not supported"):
        resolve(None, {"TZ": "CET-1CEST,M3.5.0,M10.5.0/3"})


def test_the_system_zone_as_glibc_finds_it(tmp_path: Path) -> None:
    link = tmp_path / "localtime-link"
    link.symlink_to(tmp_path / "usr/share/zoneinfo/Europe/Paris")
    copy = tmp_path / "localtime-copy"
    copy.write_bytes(tzif("Europe/Paris"))
    timezone_file = tmp_path / "timezone"

    assert system_zone({}, str(link), str(timezone_file)) == resolve("Europe/Paris")
    local = system_zone({}, str(copy), str(timezone_file))
    assert isinstance(local, Zone)
    assert (local.name, local.tzif) == (LOCAL, tzif("Europe/Paris"))
    assert local.tz.utcoffset(datetime(2024, 7, 1)) == timedelta(hours=2)
    timezone_file.write_text("Europe/Paris\n")
    assert system_zone({}, str(copy), str(timezone_file)) == resolve("Europe/Paris")
    assert system_zone({}, str(tmp_path / "none"), str(timezone_file)) == resolve("UTC")
    # TZ comes first; set but empty means UTC, whatever /etc/localtime says.
    assert system_zone({"TZ": ""}, str(copy), str(timezone_file)) == resolve("UTC")
    assert system_zone({"TZ": ":Asia/Tokyo"}, str(copy)) == resolve("Asia/Tokyo")


def test_a_tz_path(tmp_path: Path) -> None:
    (tmp_path / "zoneinfo" / "Europe").mkdir(parents=True)
    (tmp_path / "zoneinfo" / "Europe" / "Paris").write_bytes(tzif("Europe/Paris"))
    (tmp_path / "myzone").write_bytes(tzif("Europe/Paris"))

    assert system_zone({"TZ": f":{tmp_path}/zoneinfo/Europe/Paris"}) == resolve("Europe/Paris")
    local = system_zone({"TZ": str(tmp_path / "myzone")})
    assert isinstance(local, Zone)
    assert (local.name, local.tz.utcoffset(datetime(2024, 1, 1))) == (LOCAL, timedelta(hours=1))
    assert system_zone({"TZ": str(tmp_path / "none")}) == (
        f"TZ={tmp_path / 'none'} cannot be read as a zone file: [Errno 2] No such file or "
        f"directory: '{tmp_path / 'none'}'"
    )


def test_a_zone_is_rebuilt_from_its_spec_as_the_same_zone(tmp_path: Path) -> None:
    (tmp_path / "myzone").write_bytes(tzif("America/St_Johns"))
    local = resolve(None, {"TZ": str(tmp_path / "myzone")})
    again = Zone.from_spec(local.spec)
    assert again == local and again.tzif == tzif("America/St_Johns")
    assert again.tz.utcoffset(datetime(2024, 1, 1)) == timedelta(hours=-3, minutes=-30)
    assert Zone.from_spec(resolve("Asia/Kolkata").spec).tz is ZoneInfo("Asia/Kolkata")


def utc_times(payloads: list[bytes]) -> list[dict[str, str]]:
    """The times of each message (the plugin names them ``@start``, ``@end``, ``@submit``, …)."""
    return [{k: v for k, v in d.items() if k.startswith("@")} for d in map(json.loads, payloads)]


def expected_times(lines: list[bytes], tz: ZoneInfo) -> list[dict[str, str]]:
    out = []
    for line in lines:
        record = parse_line(line)
        assert isinstance(record, JobRecord)
        out += utc_times([Encoder(tz).encode(record)])
    return out


@pytest.mark.parametrize("tz", ["zonefile", ""])
def test_big_and_small_batches_get_the_same_utc_times(tmp_path: Path, tz: str) -> None:
    # A zone far from this machine's, in a file outside any zoneinfo tree.
    zone_file = tmp_path / "slurm-zone"
    zone_file.write_bytes(tzif("America/St_Johns"))
    environ = {"TZ": str(zone_file) if tz else ""}
    (tmp_path / "rdkafka.conf").write_text("bootstrap.servers=localhost:9092\n")
    config = tmp_path / "jobcompd.toml"
    config.write_text(f'[source]\npath = "{tmp_path}/log"\n[kafka]\nrdkafka_conf = "rdkafka.conf"\nparams = "topic=jobs"\n')
    settings = load_settings(config, environ=environ)
    want = ZoneInfo.from_file(zone_file.open("rb")) if tz else ZoneInfo("UTC")

    big = mixed_lines(300, seed=11)
    small = mixed_lines(3, seed=12)
    assert len(big) >= WORKER_MIN_LINES
    with State.open(tmp_path / "state") as state:
        ingestor = Ingestor.configured(state, settings.source, None)
        try:
            ingestor.commit(big, source="log", first_line_no=1, first_offset=0, position=None)
            ingestor.commit(small, source="log", first_line_no=301, first_offset=0, position=None)
        finally:
            ingestor.close()
        payloads = [r.payload for r in state.pending(limit=10**6)]
    assert utc_times(payloads) == expected_times(big + small, want)
    assert all(utc_times(payloads))  # every message has times to compare


def test_parse_reads_tz_as_run_does(tmp_path: Path) -> None:
    zone_file = tmp_path / "slurm-zone"
    zone_file.write_bytes(tzif("America/St_Johns"))
    lines = mixed_lines(20, seed=13)
    (tmp_path / "log").write_bytes(b"".join(lines))
    for tz, want in ((str(zone_file), ZoneInfo.from_file(zone_file.open("rb"))), ("", ZoneInfo("UTC"))):
        out = subprocess.run(
            [sys.executable, "-m", "jobcompd", "parse", str(tmp_path / "log")],
            env={**os.environ, "TZ": tz}, capture_output=True, check=True,
        ).stdout
        assert utc_times(out.splitlines()) == expected_times(lines, want), tz
