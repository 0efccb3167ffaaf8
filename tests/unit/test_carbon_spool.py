"""The agent's on-disk spool: ids, acknowledgement, restart continuity, torn tails, rotation and the disk budget."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from moeops.carbon.accounting.ledger import DeltaId, EnergyDelta
from moeops.carbon.node.spool import STATE_FILE, Spool, SpoolLimits

AT = datetime(2026, 1, 1, tzinfo=UTC)


def delta(energy_j: float = 1.0, source: str = "node-a/gpu-0") -> EnergyDelta:
    return EnergyDelta(
        id=DeltaId(source=source, epoch=0, sequence=0),
        node="node-a",
        region="DE",
        at=AT,
        key=None,
        gpu_energy_j=energy_j,
        cpu_energy_j=0.0,
    )


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.spool"))


def test_append_stamps_one_sequence_keeps_the_source_and_acks_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock_ns=lambda: 42)
    stamped = spool.append([delta(1.0, "a"), delta(2.0, "b"), delta(3.0, "a")])
    assert [(d.id.source, d.id.epoch, d.id.sequence) for d in stamped] == [("a", 42, 0), ("b", 42, 1), ("a", 42, 2)]
    assert spool.unacked(2) == stamped[:2]
    assert spool.ack(stamped[1]) == 2
    assert spool.ack(stamped[0]) == 0  # already acknowledged
    assert spool.unacked(10) == stamped[2:]
    assert spool.counters().pending == 1


def test_a_restart_continues_the_sequence_and_resends_only_the_unacked(tmp_path: Path) -> None:
    first = Spool(tmp_path, clock_ns=lambda: 7)
    stamped = first.append([delta(float(i)) for i in range(5)])
    first.ack(stamped[2])
    again = Spool(tmp_path, clock_ns=lambda: 999)  # state kept: same epoch whatever the clock says
    assert again.epoch == 7
    assert again.unacked(10) == stamped[3:]
    assert again.append([delta()])[0].id.sequence == 5


def test_the_sequence_continues_after_every_segment_was_acked_and_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolLimits(segment_bytes=1, max_bytes=10_000), clock_ns=lambda: 7)
    for _ in range(3):
        spool.ack(spool.append([delta()])[-1])
    assert len(segments(tmp_path)) == 0  # each append fills and closes its segment; acked ones are deleted
    assert Spool(tmp_path).append([delta()])[0].id.sequence == 3


def test_lost_state_starts_a_later_epoch_and_resends_everything_on_disk(tmp_path: Path) -> None:
    first = Spool(tmp_path, clock_ns=lambda: 100)
    stamped = first.append([delta(), delta()])
    first.ack(stamped[0])
    (tmp_path / STATE_FILE).write_text("{not json")
    again = Spool(tmp_path, clock_ns=lambda: 5)  # a clock behind the old epoch still moves the epoch forward
    assert again.epoch == 101
    assert again.unacked(10) == stamped  # nothing is known to be acked: all of it goes again
    assert again.append([delta()])[0].id.position == (101, 0)


def test_a_torn_last_line_is_ignored_and_its_sequence_given_again(tmp_path: Path) -> None:
    first = Spool(tmp_path, clock_ns=lambda: 7)
    stamped = first.append([delta(1.0), delta(2.0)])
    [segment] = segments(tmp_path)
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - 20])  # the crash cut the second line short
    again = Spool(tmp_path)
    assert again.unacked(10) == stamped[:1]
    assert again.counters().torn == 1
    assert again.append([delta(3.0)])[0].id.sequence == 1


def test_a_last_line_with_a_bad_checksum_is_torn_and_one_before_it_corrupt(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock_ns=lambda: 7)
    stamped = spool.append([delta(1.0), delta(2.0), delta(3.0)])
    [segment] = segments(tmp_path)
    lines = segment.read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b"1.0", b"9.0")
    lines[2] = lines[2].replace(b"3.0", b"8.0")
    segment.write_bytes(b"\n".join(lines))
    again = Spool(tmp_path)
    assert again.unacked(10) == [stamped[1]]
    assert (again.counters().corrupt, again.counters().torn) == (1, 1)


def test_segments_rotate_and_are_deleted_once_acked(tmp_path: Path) -> None:
    one_line = len(delta().model_dump_json()) + 10
    spool = Spool(tmp_path, SpoolLimits(segment_bytes=2 * one_line, max_bytes=100 * one_line))
    stamped = [spool.append([delta()])[0] for _ in range(6)]
    assert len(segments(tmp_path)) == 3
    spool.ack(stamped[3])
    assert len(segments(tmp_path)) == 1  # the first two segments held entries 0-3
    spool.ack(stamped[5])
    assert len(segments(tmp_path)) == 0  # the last one was closed too (full)
    assert spool.counters().acked == 6


def test_over_the_budget_the_oldest_segments_go_and_their_unsent_deltas_are_counted(tmp_path: Path) -> None:
    one_line = len(delta().model_dump_json()) + 10
    limits = SpoolLimits(segment_bytes=2 * one_line, max_bytes=5 * one_line)
    spool = Spool(tmp_path, limits)
    stamped = [spool.append([delta()])[0] for _ in range(8)]
    assert spool.disk_bytes() <= limits.max_bytes
    dropped = spool.counters().dropped
    assert dropped > 0
    assert spool.unacked(100) == stamped[dropped:]  # the freshest survive
    assert Spool(tmp_path, limits).counters().dropped == dropped  # persisted across restarts


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="segment_bytes"):
        SpoolLimits(segment_bytes=10, max_bytes=5)
