"""Create-or-patch, the pure half: what merge patch brings a live object back to the managed fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_subset(want: Any, have: Any) -> bool:
    """True when `have` already says everything `want` says (extra server-side defaults are fine)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(is_subset(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(is_subset, want, have))
    return bool(want == have)


def drift_patch(desired: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch that restores `desired` on `live`; empty when nothing drifted.

    Maps are descended into so that only differing keys are sent; lists are replaced whole (merge-patch
    semantics), but only when they differ.
    """
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        have = live.get(key)
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            sub = drift_patch(want, have)
            if sub:
                patch[key] = sub
        elif not is_subset(want, have):
            patch[key] = want
    return patch


def controlled_by(live: Mapping[str, Any], owner_uid: str) -> bool:
    """Whether `live` names `owner_uid` as its controller (we never adopt or overwrite others' objects)."""
    refs = live.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("controller") and ref.get("uid") == owner_uid for ref in refs)
