"""A task's documents: the jsonl lines whose first byte lies in its byte ranges (moeops.datafilter.ranges).

A line that is not UTF-8 JSON with a string text field is counted as malformed and skipped, never a crash;
blank lines and blank texts are skipped silently (as moeops.data.documents reads a corpus for training). The
signatures and filter stages read the same shard the same way, so a document's ordinal is the same in both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import FilterConfig


@dataclass(frozen=True)
class Line:
    file: int
    offset: int
    raw: bytes
    text: str


@dataclass
class ReadStats:
    lines: int = 0
    documents: int = 0
    bytes: int = 0
    malformed: int = 0
    malformed_examples: list[str] = field(default_factory=list)


def parse_text(raw: bytes, text_field: str) -> str:
    """The text of one jsonl line; ValueError saying why it is malformed."""
    try:
        record = json.loads(raw)
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    text = record.get(text_field)
    if not isinstance(text, str):
        raise ValueError(f"no string field {text_field!r}")
    return text


def _range_lines(path: Path, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as lines:
        offset = start
        if start > 0:
            lines.seek(start - 1)
            offset = start - 1 + len(lines.readline())  # the rest of the line started before `start`
        while offset < end:
            raw = lines.readline()
            if not raw:
                return
            yield offset, raw
            offset += len(raw)


def read_shard(config: FilterConfig, task: int, stats: ReadStats) -> Iterator[Line]:
    """Task `task`'s documents in order; `stats` counts them as they pass."""
    for part in config.ranges[task]:
        path = Path(config.inputs[part.file])
        for offset, raw in _range_lines(path, part.start, part.end):
            stats.lines += 1
            stats.bytes += len(raw)
            if not raw.strip():
                continue
            try:
                text = parse_text(raw, config.text_field)
            except ValueError as err:
                stats.malformed += 1
                if len(stats.malformed_examples) < config.examples:
                    stats.malformed_examples.append(f"{path}@{offset}: {err}")
                continue
            if text.strip():
                stats.documents += 1
                yield Line(part.file, offset, raw, text)


def read_texts(paths: list[str], text_field: str) -> Iterator[str]:
    """The texts of whole jsonl files (a reference corpus); malformed and blank lines are skipped."""
    for name in paths:
        with Path(name).open("rb") as lines:
            for raw in lines:
                try:
                    text = parse_text(raw, text_field) if raw.strip() else ""
                except ValueError:
                    continue
                if text.strip():
                    yield text
