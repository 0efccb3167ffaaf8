"""WorkerMetrics on the wire: a fixed little-endian record instead of JSON, for the one message sent by every rank at
every step.

Why: the rebalancer must ingest 50k of these a second on one core (10,240 GPUs at several steps a second), and
nats-py alone takes about 10 µs of that 20 µs budget. The strictest JSON path we had (one pydantic-core pass into a
TypedDict, the Python checks by hand) still cost about 10 µs a message; `struct` reads this record in well under
2 (benchmarks/bus_ingest.py, docs/benchmarks.md). JSON stays the bus's canonical format: `decode` takes worker
metrics in either form, so `nats pub` with a JSON body, or an older worker, still works.

Layout (schema_version 1; every multi-byte value little-endian):

    magic "\\xffM" (0xFF never starts UTF-8 text: no JSON document begins like this), schema_version u16,
    world_size u32, rank u32, step u64, tokens u64, max_memory_bytes u64,
    loss f64, aux_loss f64, step_seconds f64, compute_seconds f64, comm_seconds f64, lr f64, measured_at_unix_s f64,
    namespace length u16, job length u16, MoE layers u16,
    namespace (UTF-8), job (UTF-8), each layer's expert count u16, every count u64 (layer-major).

Validation is the model's: `read_fields` turns the bytes into the model's fields (or BadMessage for bytes that are not
such a record: TRUNCATED, INVALID, WRONG_SCHEMA_VERSION), `messages.decode` then checks them by hand and builds the
message without pydantic, falling back to `WorkerMetrics.model_validate` (which gives the reason) for anything its
checks refuse; tests/unit/test_bus_metrics_wire.py checks the two agree on damaged records.
"""

from __future__ import annotations

import functools
import struct
import sys
from array import array
from typing import Any, Final

import numpy as np

MAGIC: Final = b"\xffM"
SCHEMA_VERSION: Final = 1  # the record's own layout version; the same number as messages.SCHEMA_VERSION today

_LAYOUT: Final = (
    ("magic", "2s"),
    ("schema_version", "H"),
    ("world_size", "I"),
    ("rank", "I"),
    ("step", "Q"),
    ("tokens", "Q"),
    ("max_memory_bytes", "Q"),
    ("loss", "d"),
    ("aux_loss", "d"),
    ("step_seconds", "d"),
    ("compute_seconds", "d"),
    ("comm_seconds", "d"),
    ("lr", "d"),
    ("measured_at_unix_s", "d"),
    ("namespace_len", "H"),
    ("job_len", "H"),
    ("layers", "H"),
)
"""The record's head, field by field (struct codes); the names, layer widths and counts follow it."""
_HEAD: Final = struct.Struct("<" + "".join(code for _, code in _LAYOUT))
HEAD_SIZE: Final = _HEAD.size
FIELDS: Final = tuple(name for name, _ in _LAYOUT[2:-3])
"""The WorkerMetrics fields in the head, in their order."""
_U16_MAX: Final = 0xFFFF
_COUNT: Final = "Q"  # u64: a step's global count for one expert passes 2**32 at about 500k GPUs' worth of tokens
_NATIVE_LITTLE: Final = sys.byteorder == "little"  # arrays read and write the host's order
PLAIN_PREFIX: Final = MAGIC + SCHEMA_VERSION.to_bytes(2, "little")
"""How every record of this version begins."""


@functools.lru_cache(maxsize=64)
def plain_dtype(names_len: int) -> np.dtype[np.void]:
    """The numpy record type of a record without expert counts whose two names take `names_len` bytes: a run of
    such records (every rank but COUNTS_RANK sends them) is read as columns in one pass."""
    fields = [(name, f"S{code[0]}" if code.endswith("s") else f"<{code}") for name, code in _LAYOUT]
    return np.dtype([*fields, ("names", f"S{names_len}")])


class WireError(ValueError):
    """Bytes that are not a metrics record; `truncated`: they end early (a record cut short on the way)."""

    def __init__(self, detail: str, *, truncated: bool = False, version: int | None = None) -> None:
        super().__init__(detail)
        self.truncated = truncated
        self.version = version


def is_record(data: bytes) -> bool:
    return data[:2] == MAGIC


def pack(fields: dict[str, Any]) -> bytes:
    """The record of a WorkerMetrics' fields (`model.__dict__`); ValueError for what the layout cannot hold."""
    namespace, job = fields["namespace"].encode(), fields["job"].encode()
    layers: list[list[int]] = fields["tokens_per_expert"]
    widths = [len(layer) for layer in layers]
    if max([len(namespace), len(job), len(layers), *widths]) > _U16_MAX:
        raise ValueError("a name, the layer count or a layer's expert count does not fit in 16 bits")
    head = _HEAD.pack(
        MAGIC,
        SCHEMA_VERSION,
        *(fields[name] for name in FIELDS),
        len(namespace),
        len(job),
        len(layers),
    )
    widths_array, counts = array("H", widths), array(_COUNT, [count for layer in layers for count in layer])
    if not _NATIVE_LITTLE:
        widths_array.byteswap()
        counts.byteswap()
    return b"".join((head, namespace, job, widths_array.tobytes(), counts.tobytes()))


def read_fields(data: bytes) -> dict[str, Any]:
    """The WorkerMetrics fields in a record (not yet validated), in the model's field order, or WireError."""
    if len(data) < 4:
        raise WireError("a metrics record shorter than its magic and version", truncated=True)
    version = int.from_bytes(data[2:4], "little")
    if version != SCHEMA_VERSION:
        raise WireError(f"metrics record version {version}", version=version)
    if len(data) < _HEAD.size:
        raise WireError(f"{len(data)} bytes: shorter than a metrics record's {_HEAD.size}-byte head", truncated=True)
    (_, _, world, rank, step, tokens, memory, loss, aux, step_s, compute_s, comm_s, lr, measured, namespace_len,
     job_len, layers) = _HEAD.unpack_from(data)  # fmt: skip
    names_end = _HEAD.size + namespace_len + job_len
    if len(data) < names_end + 2 * layers:
        raise WireError("the record ends inside its names or layer widths", truncated=True)
    namespace, job = _names(data[_HEAD.size : names_end], namespace_len)
    counts = _counts(data, names_end, layers) if layers else []
    if not layers and len(data) != names_end:
        raise WireError(f"{len(data) - names_end} bytes after the record's end")
    return {
        "schema_version": version,
        "namespace": namespace,
        "job": job,
        "world_size": world,
        "rank": rank,
        "step": step,
        "loss": loss,
        "aux_loss": aux,
        "tokens": tokens,
        "step_seconds": step_s,
        "compute_seconds": compute_s,
        "comm_seconds": comm_s,
        "lr": lr,
        "tokens_per_expert": counts,
        "max_memory_bytes": memory,
        "measured_at_unix_s": measured,
        "layer_compute_seconds": [],  # never in a record: a message with them is JSON (messages.encode_metrics)
    }


@functools.lru_cache(maxsize=1024)
def _names(names: bytes, namespace_len: int) -> tuple[str, str]:
    """A record's (namespace, job): the same few jobs over and over, so decoded once each."""
    try:
        return names[:namespace_len].decode(), names[namespace_len:].decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"a name is not UTF-8: {exc.reason}") from None


def _counts(data: bytes, widths_at: int, layers: int) -> list[list[int]]:
    widths = array("H")
    widths.frombytes(data[widths_at : widths_at + 2 * layers])
    if not _NATIVE_LITTLE:
        widths.byteswap()
    counts_at = widths_at + 2 * layers
    end = counts_at + 8 * sum(widths)
    if len(data) != end:
        if len(data) < end:
            raise WireError("the record ends inside its expert counts", truncated=True)
        raise WireError(f"{len(data) - end} bytes after the record's end")
    counts = array(_COUNT)
    counts.frombytes(data[counts_at:end])
    if not _NATIVE_LITTLE:
        counts.byteswap()
    flat, out, start = counts.tolist(), [], 0
    for width in widths:
        out.append(flat[start : start + width])
        start += width
    return out
