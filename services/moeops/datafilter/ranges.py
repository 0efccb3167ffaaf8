"""Which bytes of the corpus each task reads: the files' concatenation cut into N near-equal byte ranges.

A line belongs to the range that holds its first byte, so a reader of [start, end) skips the line it starts in
the middle of and finishes the line that runs past `end`: every line is read by exactly one task, and the same
task in every stage, whatever the line lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict


class FileRange(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: int
    """Index into the list of input files."""
    start: int
    end: int


def split_ranges(sizes: Sequence[int], tasks: int) -> list[list[FileRange]]:
    """Per task, the byte ranges it reads of each file (sizes in input order)."""
    if tasks < 1:
        raise ValueError(f"tasks must be at least 1, got {tasks}")
    total = sum(sizes)
    bounds = [total * task // tasks for task in range(tasks + 1)]
    shards: list[list[FileRange]] = []
    for task in range(tasks):
        low, high = bounds[task], bounds[task + 1]
        shard = []
        offset = 0
        for index, size in enumerate(sizes):
            start, end = max(low, offset), min(high, offset + size)
            if start < end:
                shard.append(FileRange(file=index, start=start - offset, end=end - offset))
            offset += size
        shards.append(shard)
    return shards
