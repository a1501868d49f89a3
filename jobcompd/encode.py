""":class:`JobRecord` → the ``jobcomp/kafka`` plugin's JSON bytes, and the deterministic record id.

The JSON has the plugin's keys, in the plugin's order, with its types and omission rules
(reference §2). Keys the filetxt line cannot tell are left out rather than guessed.

Times in the log are slurmctld's local wall-clock time with no offset; they are converted to UTC
with the configured IANA zone:

* a time inside a DST *gap* (it cannot come from slurmctld's ``localtime_r()``, but a hand-edited
  or foreign log may hold one) is read with the offset in force *before* the transition;
* a time inside a DST *fold* (the repeated hour) is read as its *first* occurrence, except an end
  time that would then fall before the job's start, which is read as the second occurrence.

``cpu_hours`` is computed as the plugin computes it — ``(elapsed * total_cpus) / 3600.0f`` in C, a
single-precision division widened to double — so the value is the one the plugin sends.
"""

from __future__ import annotations

import calendar
import hashlib
import struct
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import orjson

from jobcompd.record import JobRecord

__all__ = ["RECORD_ID_PERSON", "Encoder", "record_id"]

_F32 = struct.Struct("f")


def _f32(value: float) -> float:
    """``value`` rounded to C ``float`` (single precision), as the plugin's arithmetic does."""
    return _F32.unpack(_F32.pack(value))[0]  # type: ignore[no-any-return]


_ONE_SECOND_BEFORE_NEXT_HOUR = timedelta(minutes=59, seconds=59)


_ZERO = orjson.Fragment(b"0.0")


def _json_c_double(value: float) -> orjson.Fragment:
    """``value`` as json-c prints a double: ``%.17g``, with ``.0`` when that reads as an integer."""
    text = "%.17g" % value
    if "." not in text and "e" not in text and "n" not in text:
        text += ".0"
    return orjson.Fragment(text.encode())


RECORD_ID_PERSON = b"jobcompd-rec-v1"
"""BLAKE2b personalisation of record ids (the compiled reader computes the same ids)."""

_RECORD_ID_HASH = hashlib.blake2b(digest_size=16, person=RECORD_ID_PERSON)


def record_id(line: bytes, cluster: str | None) -> str:
    """Deterministic id of one record: 128-bit BLAKE2b of the cluster name and the raw line.

    The same line read twice gives the same id; a different job (a wrapped JobId still differs in
    its times) or the same line from another cluster gives a different one. Line-ending bytes are
    not part of the identity (``\\n`` and ``\\r\\n`` give the same id).
    """
    digest = _RECORD_ID_HASH.copy()  # the personalised start state, without setting it up again
    digest.update((cluster or "").encode() + b"\x00")
    digest.update(line.rstrip(b"\r\n"))
    return digest.hexdigest()


_MINUTE_SECOND = {f"{m:02d}:{sec:02d}": m * 60 + sec for m in range(60) for sec in range(60)}


class _Clock:
    """Local wall-clock text → (epoch seconds, UTC text), cached per local hour."""

    __slots__ = ("_zone", "_hours")

    def __init__(self, zone: ZoneInfo) -> None:
        self._zone = zone
        # local "YYYY-MM-DDTHH" → (epoch of HH:00:00, UTC "YYYY-MM-DDTHH" or None), or None when
        # the offset changes inside that hour (then every time in it takes the slow path).
        self._hours: dict[str, tuple[int, str | None] | None] = {}

    def convert(self, local: str, *, fold: int = 0) -> tuple[int, str]:
        hour = local[:13]
        try:
            entry = self._hours[hour]
        except KeyError:
            entry = self._hours[hour] = self._hour(hour)
            if len(self._hours) > 100_000:
                self._hours.clear()
        if entry is None or fold:
            return self._slow(local, fold)
        base, utc_hour = entry
        epoch = base + _MINUTE_SECOND[local[14:]]
        if utc_hour is not None:
            return epoch, utc_hour + local[13:]
        return epoch, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))

    def ambiguous(self, local: str) -> bool:
        naive = datetime.fromisoformat(local)
        a = naive.replace(tzinfo=self._zone, fold=0).utcoffset()
        b = naive.replace(tzinfo=self._zone, fold=1).utcoffset()
        return a != b

    def _hour(self, hour: str) -> tuple[int, str | None] | None:
        start = datetime(int(hour[:4]), int(hour[5:7]), int(hour[8:10]), int(hour[11:13]))
        offset = start.replace(tzinfo=self._zone).utcoffset()
        last = (start + _ONE_SECOND_BEFORE_NEXT_HOUR).replace(tzinfo=self._zone).utcoffset()
        if offset is None or offset != last:
            return None
        seconds = int(offset.total_seconds())
        base = calendar.timegm(start.timetuple()) - seconds
        utc_hour = time.strftime("%Y-%m-%dT%H", time.gmtime(base)) if seconds % 3600 == 0 else None
        return base, utc_hour

    def _slow(self, local: str, fold: int) -> tuple[int, str]:
        aware = datetime.fromisoformat(local).replace(tzinfo=self._zone, fold=fold)
        offset = aware.utcoffset()
        assert offset is not None
        naive = aware.replace(tzinfo=None)
        epoch = calendar.timegm(naive.timetuple()) - int(offset.total_seconds())
        return epoch, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


class Encoder:
    """Turns :class:`JobRecord` values into the plugin's compact JSON bytes.

    ``zone`` is the zone of the log's times; ``cluster`` is the fallback cluster name for record
    ids of lines that carry none (before 17.11).
    """

    __slots__ = ("_clock", "cluster")

    def __init__(self, zone: ZoneInfo, cluster: str | None = None) -> None:
        self._clock = _Clock(zone)
        self.cluster = cluster

    @property
    def zone(self) -> ZoneInfo:
        """The zone the log's times are read in."""
        return self._clock._zone

    def record_id(self, line: bytes, record: JobRecord) -> str:
        """The deterministic id of ``record`` read from ``line``."""
        return record_id(line, record.cluster or self.cluster)

    def to_dict(self, r: JobRecord) -> dict[str, object]:
        """The plugin's JSON object for ``r`` as an ordered dict."""
        (
            jobid,
            username,
            user_id,
            groupname,
            group_id,
            name,
            state,
            partition,
            limit,
            start_l,
            end_l,
            nodes,
            node_count,
            cpus,
            work_dir,
            _generation,
            reservation,
            tres,
            account,
            qos,
            wckey,
            cluster,
            submit_l,
            eligible_l,
            array_job_id,
            array_task_id,
            het_job_id,
            het_job_offset,
            derived_ec,
            exit_code,
            _extra,
            _ambiguous,
        ) = r
        convert = self._clock.convert
        d: dict[str, object] = {
            "jobid": jobid,
            "username": username,
            "user_id": user_id,
            "groupname": groupname,
            "group_id": group_id,
        }
        elapsed = 0
        start = None
        if start_l is not None:
            start = convert(start_l)
            d["@start"] = start[1]
        if end_l is not None:
            end = convert(end_l)
            if start is not None:
                if end[0] < start[0] and self._clock.ambiguous(end_l):
                    end = convert(end_l, fold=1)
                if end[0] > start[0]:
                    elapsed = end[0] - start[0]
            d["@end"] = end[1]
        d["elapsed"] = elapsed
        d["partition"] = partition
        d["nodes"] = nodes
        d["total_cpus"] = cpus
        d["total_nodes"] = node_count
        if derived_ec is not None:
            d["derived_ec"] = derived_ec
        if exit_code is not None:
            d["exit_code"] = exit_code
        d["state"] = state
        if elapsed and cpus:
            d["cpu_hours"] = _json_c_double(_f32(_f32(float(elapsed * cpus)) / 3600.0))
        else:
            d["cpu_hours"] = _ZERO
        if array_task_id is not None:
            d["array_job_id"] = array_job_id
            d["array_task_id"] = array_task_id
        d["pack_job_id"] = het_job_id
        d["pack_job_offset"] = het_job_offset
        d["het_job_id"] = het_job_id
        d["het_job_offset"] = het_job_offset
        if submit_l is not None:
            d["@submit"] = convert(submit_l)[1]
        if eligible_l is not None:
            eligible = convert(eligible_l)
            d["@eligible"] = eligible[1]
            if start is not None and start[0] >= eligible[0]:
                d["@queue_wait"] = start[0] - eligible[0]
        if work_dir is not None:
            d["work_dir"] = work_dir
        if cluster is not None:
            d["cluster"] = cluster
        if qos is not None:
            d["qos"] = qos
        if limit is not None:
            d["time_limit"] = limit * 60
        if name is not None:
            d["job_name"] = name
        if reservation is not None:
            d["reservation_name"] = reservation
        if wckey is not None:
            d["wc_key"] = wckey
        if tres is not None:
            d["tres_req"] = tres
        if account is not None:
            d["account"] = account
        return d

    def encode(self, r: JobRecord) -> bytes:
        """The plugin's message for ``r``, byte for byte as json-c writes it (valid UTF-8)."""
        # json-c escapes every "/" (a "/" can only stand inside a string here: keys and numbers
        # hold none). The replace also copies the message into a bytes object of its own length:
        # orjson (3.12 and later) hands back its whole write buffer, 4–16 KiB for a ~600-byte
        # message, and a batch of spooled or in-flight messages held 25 times their size.
        out = orjson.dumps(self.to_dict(r))
        return out.replace(b"/", b"\\/") if b"/" in out else b"".join((out, b""))
