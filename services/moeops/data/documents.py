"""Reading documents from a `file://` or `pvc://` source, in the `text` or `jsonl` format of DataSpec.format.

- A source is one file (read whatever its name) or a directory: every file below it, recursively, whose
  name ends in `.txt` (text) or `.jsonl` (jsonl), in sorted path order so every process reads the same
  documents in the same order. Hidden files and directories (a leading dot) are skipped.
- `pvc://<claim>/<path>` is `<data root>/<claim>/<path>`: in a worker the operator mounts the claim read-only at
  `/data/<claim>` (DATA_MOUNT_ROOT); a local run names another root.
- `text`: documents are separated by blank lines (lines holding only spaces or tabs count as blank), so one
  file may hold many short documents and a file with no blank lines is one document.
- `jsonl`: one JSON object per line, its text under `text_field`. A line that is not UTF-8, not JSON, not an
  object, or lacks a string `text_field` is counted and skipped, never a crash; blank lines and empty texts
  are skipped silently. Only when nothing valid is left is it an error.

Documents are streamed (iter_documents): a file is read a line at a time and a document is handed on as soon as
it is complete, so reading a corpus holds one document in memory, not the corpus.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from moeops.api.v1alpha1.data import DATA_FORMATS, DATA_MOUNT_ROOT, pvc_claim_and_path

log = logging.getLogger("moeops.data")

FILE_SUFFIX = {"text": ".txt", "jsonl": ".jsonl"}
"""The formats this module reads, and the file names a directory source is read for. Every format the API
accepts (DATA_FORMATS) must be here: tests/unit/test_data_spec_contract.py checks it."""
SUPPORTED_FORMATS = tuple(FILE_SUFFIX)

MALFORMED_EXAMPLES = 5
"""How many malformed-line locations a report keeps: enough to find the pattern, not a flood."""


@dataclass
class DocumentStats:
    """What a read found, filled in while the documents stream past."""

    files: int = 0
    documents: int = 0
    malformed_lines: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    """"path:line: why" for the first MALFORMED_EXAMPLES malformed lines."""

    def add_malformed(self, path: Path, line: int, why: str) -> None:
        self.malformed_lines += 1
        if len(self.malformed_examples) < MALFORMED_EXAMPLES:
            self.malformed_examples.append(f"{path}:{line}: {why}")


@dataclass
class Documents(DocumentStats):
    """A whole read in memory (small corpora, tests); the trainer streams instead (iter_documents)."""

    texts: list[str] = field(default_factory=list)


def check_format(fmt: str) -> None:
    if fmt not in SUPPORTED_FORMATS:
        accepted = "" if fmt in DATA_FORMATS else f" (the API accepts {', '.join(DATA_FORMATS)})"
        raise ValueError(f"unknown data format {fmt!r}; supported: {', '.join(SUPPORTED_FORMATS)}{accepted}")


def source_path(source: str, data_root: str | Path = DATA_MOUNT_ROOT) -> Path:
    """`file:///data/corpus` -> Path("/data/corpus"); `pvc://corpus/v3` -> `<data_root>/corpus/v3`. ValueError
    for another scheme or a file URI with a host (`file://data/x` names the host "data": the usual slip for
    `file:///data/x`)."""
    if source.startswith("pvc://"):
        found = pvc_claim_and_path(source)
        if found is None:
            raise ValueError(f"data source {source!r} is not pvc://<claim>/<path>")
        claim, path = found
        return Path(data_root, claim, path.lstrip("/"))
    uri = urlparse(source)
    if uri.scheme != "file":
        raise ValueError(f"the text loader reads only file:// and pvc:// sources, got {source!r}")
    if uri.netloc not in ("", "localhost"):
        raise ValueError(
            f"data source {source!r} names the host {uri.netloc!r}; a local path needs three slashes:"
            f" 'file:///{uri.netloc}{uri.path}'"
        )
    if not uri.path:
        raise ValueError(f"data source {source!r} has no path")
    return Path(unquote(uri.path))


def source_files(path: Path, fmt: str) -> list[Path]:
    """The files a source path stands for (see the module docstring); ValueError if there are none."""
    check_format(fmt)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"data path {path} does not exist")
    suffix = FILE_SUFFIX[fmt]
    files = sorted(
        p
        for p in path.rglob(f"*{suffix}")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise ValueError(f"data directory {path} holds no {suffix} files (format {fmt!r})")
    return files


def _text_documents(path: Path) -> Iterator[str]:
    """A text file's documents, a line at a time. A separator is a blank line (spaces and tabs only) that follows
    a newline and ends in one, as the regex \\n([ \\t]*\\n)+ would split the whole text."""
    lines: list[str] = []
    offset = 0  # bytes read so far, for a decoding error's position in the file
    first = True  # the file's first line follows no newline: it is never a separator
    with path.open("rb") as raw:
        for line in raw:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path} is not UTF-8 text: {err.reason} at byte {offset + err.start}") from err
            offset += len(line)
            # Universal newlines, as read_text gives them: \r\n and a lone \r end a line too.
            parts = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            for number, body in enumerate(parts):
                ended = number < len(parts) - 1  # followed by a newline
                if not ended and not body:
                    continue
                if not first and ended and not body.strip(" \t"):
                    yield from _document(lines)
                    lines = []
                else:
                    lines.append(body)
                first = False
    yield from _document(lines)


def _document(lines: list[str]) -> Iterator[str]:
    doc = "\n".join(lines).strip("\n")
    if doc.strip():
        yield doc


def _jsonl_text(raw: bytes, text_field: str) -> str:
    """The text of one jsonl line; ValueError saying why if it is malformed."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    if text_field not in record:
        raise ValueError(f"no {text_field!r} field")
    text = record[text_field]
    if not isinstance(text, str):
        raise ValueError(f"field {text_field!r} is a {type(text).__name__}, not a string")
    return text


def _jsonl_documents(path: Path, text_field: str, stats: DocumentStats) -> Iterator[str]:
    # Bytes, not text: one line with broken UTF-8 must cost that line only, not the whole file.
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                text = _jsonl_text(raw, text_field)
            except ValueError as err:
                stats.add_malformed(path, number, str(err))
                continue
            if text.strip():
                yield text


def iter_documents(
    files: Sequence[str | Path], fmt: str, text_field: str = "text", stats: DocumentStats | None = None
) -> Iterator[str]:
    """The documents of these files in this order, one at a time; `stats` counts them as they pass. Once the
    last has passed: a warning if lines were skipped, ValueError naming the files if there was no document."""
    check_format(fmt)
    if not files:
        raise ValueError("no data files given")
    stats = DocumentStats() if stats is None else stats
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"data file {path} does not exist")
        docs = _jsonl_documents(path, text_field, stats) if fmt == "jsonl" else _text_documents(path)
        for doc in docs:
            stats.documents += 1
            yield doc
        stats.files += 1
    _check_read(files, fmt, text_field, stats)


def _check_read(files: Sequence[str | Path], fmt: str, text_field: str, stats: DocumentStats) -> None:
    where = str(files[0]) if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
    if stats.malformed_lines:
        log.warning(
            "skipped %d malformed jsonl lines in %s, first: %s",
            stats.malformed_lines,
            where,
            "; ".join(stats.malformed_examples),
        )
    if not stats.documents:
        why = "there is no non-blank text"
        if stats.malformed_lines:
            why = f"all {stats.malformed_lines} non-blank lines are malformed, first: {stats.malformed_examples[0]}"
        field_note = f", text field {text_field!r}" if fmt == "jsonl" else ""
        raise ValueError(f"no documents in {where} (format {fmt!r}{field_note}): {why}")


def read_files(files: Sequence[str | Path], fmt: str, text_field: str = "text") -> Documents:
    """All documents of these files in memory (see iter_documents)."""
    docs = Documents()
    docs.texts = list(iter_documents(files, fmt, text_field, docs))
    return docs


def read_documents(
    source: str, fmt: str, text_field: str = "text", data_root: str | Path = DATA_MOUNT_ROOT
) -> Documents:
    """All documents of a `file://` or `pvc://` source in memory (see the module docstring for what counts as one)."""
    check_format(fmt)
    return read_files(source_files(source_path(source, data_root), fmt), fmt, text_field)
