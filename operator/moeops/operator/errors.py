"""Errors of the pure layers. They say what is wrong with a spec in words a user can act on."""

from __future__ import annotations


class InvalidSpec(ValueError):
    """A spec the API server accepted but the operator cannot run (only the operator can tell).

    `reason` is a CamelCase condition reason; the message names the offending field.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ModelNotReady(Exception):
    """The referenced model exists but has nothing to serve yet (e.g. no checkpoint): retry later."""
