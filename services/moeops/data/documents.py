"""Reading documents from a `file://` source, in the `text` or `jsonl` format of DataSpec.format.

- A source is one file (read whatever its name) or a directory: every file below it, recursively, whose
  name ends in `.txt` (text) or `.jsonl` (jsonl), in sorted path order so every process reads the same
  documents in the same order. Hidden files and directories (a leading dot) are skipped.
- `text`: documents are separated by blank lines (lines holding only spaces or tabs count as blank), so one
  file may hold many short documents and a file with no blank lines is one document.
- `jsonl`: one JSON object per line, its text under `text_field`. A line that is not UTF-8, not JSON, not an
  object, or lacks a string `text_field` is counted and skipped, never a crash; blank lines and empty texts
  are skipped silently. Only when nothing valid is left is it an error.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

log = logging.getLogger("moeops.data")

FILE_SUFFIX = {"text": ".txt", "jsonl": ".jsonl"}
SUPPORTED_FORMATS = tuple(FILE_SUFFIX)
NOT_YET_SUPPORTED_FORMATS = ("parquet", "tokens")

MALFORMED_EXAMPLES = 5
"""How many malformed-line locations a report keeps: enough to find the pattern, not a flood."""

_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


@dataclass
class Documents:
    texts: list[str] = field(default_factory=list)
    files: int = 0
    malformed_lines: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    """"path:line: why" for the first MALFORMED_EXAMPLES malformed lines."""

    def add_malformed(self, path: Path, line: int, why: str) -> None:
        self.malformed_lines += 1
        if len(self.malformed_examples) < MALFORMED_EXAMPLES:
            self.malformed_examples.append(f"{path}:{line}: {why}")


def check_format(fmt: str) -> None:
    if fmt in NOT_YET_SUPPORTED_FORMATS:
        raise ValueError(
            f"data format {fmt!r} is not supported yet by the text loader; use one of {', '.join(SUPPORTED_FORMATS)}"
        )
    if fmt not in SUPPORTED_FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; supported: {', '.join(SUPPORTED_FORMATS)}")


def source_path(source: str) -> Path:
    """`file:///data/corpus` -> Path("/data/corpus"). ValueError for another scheme or a file URI with a host
    (`file://data/x` names the host "data": the usual slip for `file:///data/x`)."""
    uri = urlparse(source)
    if uri.scheme != "file":
        raise ValueError(f"the text loader reads only file:// sources, got {source!r}")
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


def _read_text_file(path: Path, into: Documents) -> None:
    try:
        content = path.read_text(encoding="utf-8")  # universal newlines: \r\n and \r become \n
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from err
    into.texts += [doc.strip("\n") for doc in _BLANK_LINES.split(content) if doc.strip()]


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


def _read_jsonl_file(path: Path, text_field: str, into: Documents) -> None:
    # Bytes, not text: one line with broken UTF-8 must cost that line only, not the whole file.
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = _jsonl_text(raw, text_field)
        except ValueError as err:
            into.add_malformed(path, number, str(err))
            continue
        if text.strip():
            into.texts.append(text)


def read_files(files: Sequence[str | Path], fmt: str, text_field: str = "text") -> Documents:
    """Documents of these files in this order. ValueError naming the files if none holds a document."""
    check_format(fmt)
    if not files:
        raise ValueError("no data files given")
    docs = Documents()
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"data file {path} does not exist")
        if fmt == "jsonl":
            _read_jsonl_file(path, text_field, docs)
        else:
            _read_text_file(path, docs)
        docs.files += 1
    where = str(files[0]) if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
    if docs.malformed_lines:
        log.warning(
            "skipped %d malformed jsonl lines in %s, first: %s",
            docs.malformed_lines,
            where,
            "; ".join(docs.malformed_examples),
        )
    if not docs.texts:
        why = "there is no non-blank text"
        if docs.malformed_lines:
            why = f"all {docs.malformed_lines} non-blank lines are malformed, first: {docs.malformed_examples[0]}"
        field_note = f", text field {text_field!r}" if fmt == "jsonl" else ""
        raise ValueError(f"no documents in {where} (format {fmt!r}{field_note}): {why}")
    return docs


def read_documents(source: str, fmt: str, text_field: str = "text") -> Documents:
    """All documents of a `file://` source (see the module docstring for what counts as one)."""
    check_format(fmt)
    return read_files(source_files(source_path(source), fmt), fmt, text_field)
