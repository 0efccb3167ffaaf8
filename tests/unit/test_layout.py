"""The house rules of the package layout."""

from __future__ import annotations

import importlib
import operator as stdlib_operator
from pathlib import Path

import moeops

REPO = Path(__file__).resolve().parents[2]


def test_operator_folder_never_shadows_the_stdlib_module() -> None:
    assert Path(stdlib_operator.__file__).parent != REPO / "operator"
    assert stdlib_operator.add(2, 3) == 5
    assert not (REPO / "operator" / "__init__.py").exists()


def test_moeops_is_one_namespace_over_both_source_roots() -> None:
    portions = {Path(p).parent.name for p in moeops.__path__}
    assert portions == {"operator", "services", "devtools"}  # devtools/: the local platform, editable installs only
    assert importlib.import_module("moeops.api").__name__ == "moeops.api"
    assert importlib.import_module("moeops.devcluster").__name__ == "moeops.devcluster"
