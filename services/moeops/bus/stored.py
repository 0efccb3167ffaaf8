"""Decoding what a KV bucket stores (reports, job descriptions): the typed value or BadMessage, never a crash."""

from __future__ import annotations

from typing import TypeVar

import pydantic_core
from pydantic import ValidationError

from .messages import SCHEMA_VERSION, BadMessage, BadMessageReason, BusMessage

Stored = TypeVar("Stored", bound=BusMessage)


def decode_stored(model: type[Stored], data: bytes) -> Stored:
    try:
        document = pydantic_core.from_json(data)
    except ValueError as exc:
        raise BadMessage(BadMessageReason.NOT_JSON, str(exc)) from None
    version = document.get("schema_version") if isinstance(document, dict) else None
    if type(version) is not int or version != SCHEMA_VERSION:  # `type ... is`: JSON true is not version 1
        raise BadMessage(BadMessageReason.WRONG_SCHEMA_VERSION, f"schema_version {version!r}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise BadMessage(BadMessageReason.INVALID, str(exc.errors(include_url=False)[:3])) from None
