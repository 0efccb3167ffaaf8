"""The node agent's on-disk spool: every energy delta is on disk before it is sent, until the stream has it.

Why: NATS can be away for minutes (a rolling upgrade, a partition) and the agent can be restarted at any time;
neither may lose joules. The agent appends each poll's deltas here (one write and one fsync per poll), sends what
is not acknowledged yet, and acknowledges in order once JetStream has stored it.

Ids. The spool stamps each delta's `DeltaId(source, epoch, sequence)` (the source's own `source` is kept): one
sequence per spool, increasing by one per delta, so each source's deltas increase too (with gaps, which the
ledger's high-water marks allow). The epoch and the acknowledged position live in `state.json`, so a restarted
agent continues the sequence; if that state is lost or unreadable, the spool starts a new epoch (the clock in ns,
above every epoch still on disk), which the ledger orders after the old one, and sends every entry still on disk
again (the stream and the ledger drop what they already have).

Layout. Segments `segment-<n>.spool`, one line per delta: `<crc32 hex> <EnergyDelta JSON>\\n`. Only the newest
segment is written to, and only by this process; a reopened spool starts a new segment. A crash can tear the
last line of a segment (no newline, or a checksum that fails): it was never fsync'd, so never sent, and it is
ignored (counted in `torn`); its sequence is given again. A bad line before the last is counted in `corrupt`.
A segment whose entries are all acknowledged is deleted once it is no longer written to.

Budget. When the segments exceed `max_bytes`, the oldest are deleted, and their unacknowledged entries counted
in `dropped`: the freshest energy is worth more than the oldest, and a full disk would stop the node's other
work. Deletion is per segment, so keep `segment_bytes` well below `max_bytes`.

Memory: the unacknowledged deltas are also held in memory (a few hundred bytes each on disk, about three times
that as objects), so `max_bytes` bounds the agent's memory as well.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from moeops.carbon.accounting.ledger import DeltaId, EnergyDelta

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
SEGMENT_PREFIX, SEGMENT_SUFFIX = "segment-", ".spool"
STATE_VERSION = 1

Position = tuple[int, int]
"""(epoch, sequence): the order of entries in the spool."""


@dataclass(frozen=True)
class SpoolLimits:
    segment_bytes: int = 4 * 1024 * 1024
    """A segment is closed (and a new one begun) once it holds this much."""
    max_bytes: int = 256 * 1024 * 1024
    """All segments together; beyond it the oldest are dropped. About a day of a busy 8-GPU node's deltas."""

    def __post_init__(self) -> None:
        if not 0 < self.segment_bytes <= self.max_bytes:
            raise ValueError(f"need 0 < segment_bytes <= max_bytes: {self}")


@dataclass(frozen=True)
class SpoolCounters:
    appended: int
    acked: int
    dropped: int
    """Unacknowledged entries deleted to keep within `max_bytes` (since the spool was created, across restarts)."""
    torn: int
    """Torn last lines found when opening (a crash mid-write)."""
    corrupt: int
    """Unreadable lines before a segment's last, found when opening."""
    pending: int


@dataclass
class _Segment:
    number: int
    path: Path
    size: int
    last: Position | None
    """The newest entry in it (None: empty)."""


def _position(delta: EnergyDelta) -> Position:
    return delta.id.epoch, delta.id.sequence


def _line(delta: EnergyDelta) -> bytes:
    body = delta.model_dump_json().encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _parse(line: bytes) -> EnergyDelta | None:
    checksum, _, body = line.partition(b" ")
    try:
        if int(checksum, 16) != zlib.crc32(body):
            return None
        return EnergyDelta.model_validate_json(body)
    except (ValueError, ValidationError):
        return None


def _fsync_dir(directory: Path) -> None:
    """A new or renamed file survives a crash only once its directory entry is on disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Append, read what is unacknowledged, acknowledge in order; see the module docstring."""

    def __init__(
        self, directory: Path, limits: SpoolLimits | None = None, *, clock_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self._dir = directory
        self._limits = limits or SpoolLimits()
        directory.mkdir(parents=True, exist_ok=True)
        self._segments: list[_Segment] = []
        self._pending: deque[EnergyDelta] = deque()
        self._appended = self._acked = self._torn = self._corrupt = 0
        self._active: _Segment | None = None
        state = self._read_state()
        self._load_segments(state[1] if state else None)
        newest = max((s.last for s in self._segments if s.last is not None), default=None)
        if state is None:
            oldest_epoch = newest[0] + 1 if newest is not None else 0
            self._epoch, self._acked_at, self._dropped = max(clock_ns(), oldest_epoch), None, 0
            logger.info("spool %s: no usable state, starting epoch %d", directory, self._epoch)
        else:
            self._epoch, self._acked_at, self._dropped = state
        marks = [p[1] for p in (newest, self._acked_at) if p is not None and p[0] == self._epoch]
        self._next_sequence = max(marks) + 1 if marks else 0
        self._write_state()
        self._delete_acked()

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    def counters(self) -> SpoolCounters:
        return SpoolCounters(self._appended, self._acked, self._dropped, self._torn, self._corrupt, len(self._pending))

    def disk_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    # --- writing --------------------------------------------------------------------------------------------

    def append(self, deltas: Sequence[EnergyDelta]) -> list[EnergyDelta]:
        """Stamps the deltas' ids (see the module docstring), writes and fsyncs them; the stamped deltas."""
        if not deltas:
            return []
        stamped = []
        for offset, delta in enumerate(deltas):
            ident = DeltaId(source=delta.id.source, epoch=self._epoch, sequence=self._next_sequence + offset)
            stamped.append(delta.model_copy(update={"id": ident}))
        data = b"".join(_line(delta) for delta in stamped)
        segment = self._active or self._open_segment()
        with segment.path.open("ab") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        self._next_sequence += len(stamped)
        segment.size += len(data)
        segment.last = _position(stamped[-1])
        self._pending.extend(stamped)
        self._appended += len(stamped)
        if segment.size >= self._limits.segment_bytes:
            self._active = None  # the next append begins a new segment
            self._delete_acked()
        self._enforce_budget()
        return stamped

    def _open_segment(self) -> _Segment:
        number = self._segments[-1].number + 1 if self._segments else 0
        path = self._dir / f"{SEGMENT_PREFIX}{number:012d}{SEGMENT_SUFFIX}"
        path.touch()
        _fsync_dir(self._dir)
        self._active = _Segment(number, path, 0, None)
        self._segments.append(self._active)
        return self._active

    def _enforce_budget(self) -> None:
        while self.disk_bytes() > self._limits.max_bytes and len(self._segments) > 1:
            oldest = self._segments.pop(0)
            dropped = 0  # its unacknowledged entries are the oldest pending ones
            while oldest.last is not None and self._pending and _position(self._pending[0]) <= oldest.last:
                self._pending.popleft()
                dropped += 1
            oldest.path.unlink(missing_ok=True)
            if dropped:
                self._dropped += dropped
                logger.warning("spool over %d bytes: dropped %d unsent deltas", self._limits.max_bytes, dropped)
                self._write_state()

    # --- reading and acknowledging ----------------------------------------------------------------------------

    def unacked(self, most: int) -> list[EnergyDelta]:
        """The oldest `most` unacknowledged deltas, in order."""
        return [self._pending[index] for index in range(min(most, len(self._pending)))]

    def ack(self, through: EnergyDelta) -> int:
        """Acknowledges `through` and every entry before it (persisted before any segment is deleted); how many."""
        position = _position(through)
        count = 0
        while self._pending and _position(self._pending[0]) <= position:
            self._pending.popleft()
            count += 1
        if not count:
            return 0
        self._acked_at = position
        self._acked += count
        self._write_state()
        self._delete_acked()
        return count

    def _delete_acked(self) -> None:
        acked = self._acked_at
        for segment in list(self._segments):
            done = segment.last is None or (acked is not None and segment.last <= acked)
            if segment is not self._active and done:
                segment.path.unlink(missing_ok=True)
                self._segments.remove(segment)

    # --- state ------------------------------------------------------------------------------------------------

    def _read_state(self) -> tuple[int, Position | None, int] | None:
        """(epoch, acknowledged position, dropped), or None when the state is missing or unreadable."""
        try:
            document = json.loads((self._dir / STATE_FILE).read_text())
            if document["version"] != STATE_VERSION:
                return None
            acked = document["acked"]
            position = (int(acked[0]), int(acked[1])) if acked is not None else None
            return int(document["epoch"]), position, int(document["dropped"])
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            if (self._dir / STATE_FILE).exists():
                logger.warning("spool state %s unreadable (%s): starting a new epoch", self._dir / STATE_FILE, exc)
            return None

    def _write_state(self) -> None:
        """Atomically: a crash leaves the old state or the new one, never half of one."""
        document = {"version": STATE_VERSION, "epoch": self._epoch, "acked": self._acked_at, "dropped": self._dropped}
        temporary = self._dir / f"{STATE_FILE}.tmp"
        with temporary.open("w") as file:
            json.dump(document, file)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(self._dir / STATE_FILE)
        _fsync_dir(self._dir)

    def _load_segments(self, acked: Position | None) -> None:
        for path in sorted(self._dir.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}")):
            try:
                number = int(path.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)])
            except ValueError:
                continue
            data = path.read_bytes()
            lines = data.split(b"\n")
            # The chunk after the last newline is empty for a clean file, else a torn write.
            complete, tail = lines[:-1], lines[-1]
            segment = _Segment(number, path, len(data), None)
            if tail:
                self._torn += 1
            for index, line in enumerate(complete):
                delta = _parse(line)
                if delta is None:
                    if index == len(complete) - 1 and not tail:
                        self._torn += 1
                    else:
                        self._corrupt += 1
                    continue
                segment.last = _position(delta)
                if acked is None or _position(delta) > acked:
                    self._pending.append(delta)
            self._segments.append(segment)
        if self._torn or self._corrupt:
            logger.warning("spool %s: ignored %d torn and %d corrupt lines", self._dir, self._torn, self._corrupt)
