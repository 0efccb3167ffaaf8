"""A desired child object and the part of it the operator keeps in sync after creation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Child:
    """`body` is what gets created; `managed` is the subset patched back when the live object drifts.

    Only mutable fields belong in `managed` (a Job's pod template, for one, can't change after creation).
    """

    body: dict[str, Any]
    managed: dict[str, Any] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return str(self.body["apiVersion"])

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])
