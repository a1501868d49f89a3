"""Read positions: where the reader of each log file stands."""

from __future__ import annotations

from typing import Any

from jobcompd.identity import Position
from jobcompd.state._database import Database
from jobcompd.state._schema import _signed, _unsigned

_POSITION_COLUMNS = "source, path, fingerprint, byte_offset, line_no, inode, dev, size, updated_at"

_UPSERT_POSITION = f"""
INSERT INTO position ({_POSITION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (source) DO UPDATE SET
    path = excluded.path, fingerprint = excluded.fingerprint, byte_offset = excluded.byte_offset,
    line_no = excluded.line_no, inode = excluded.inode, dev = excluded.dev, size = excluded.size,
    updated_at = excluded.updated_at
"""


class Positions(Database):
    """The committed read position of each log file, by its key (see :mod:`jobcompd.identity`)."""

    def position(self, key: str) -> Position | None:
        """The committed read position stored under ``key``, or None if it was never read."""
        with self._reading("read a position") as db:
            row = db.execute(
                f"SELECT {_POSITION_COLUMNS} FROM position WHERE source = ?", (key,)
            ).fetchone()
        return None if row is None else _position(row)

    def positions(self) -> list[Position]:
        """Every committed read position, ordered by key."""
        with self._reading("read positions") as db:
            rows = db.execute(
                f"SELECT {_POSITION_COLUMNS} FROM position ORDER BY source"
            ).fetchall()
        return [_position(row) for row in rows]

    def forget_position(self, key: str) -> bool:
        """Drop the read position of a file that is gone for good; True if there was one."""
        with self._transaction("forget a position") as db:
            return db.execute("DELETE FROM position WHERE source = ?", (key,)).rowcount > 0


def _position_row(p: Position, now: float) -> tuple[object, ...]:
    return (
        p.key,
        p.path,
        p.fingerprint,
        p.offset,
        p.line_no,
        _signed(p.inode),
        _signed(p.dev),
        p.offset,  # the "size" column: what the file held up to the position
        now,
    )


def _position(row: Any) -> Position:
    key, path, fingerprint, offset, line_no, inode, dev, _, updated_at = row
    return Position(
        key,
        path,
        fingerprint,
        offset,
        line_no,
        _unsigned(inode),
        _unsigned(dev),
        updated_at,
    )
