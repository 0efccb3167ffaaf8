"""images/constraints.txt, the images' lock: every builder installs the project's wheel through it, it pins exactly
(one `name==version` per distribution), it covers every distribution the images' extras bring, and each pin
satisfies pyproject.toml (a dependency bumped there without re-locking fails here)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
LOCK = IMAGES / "constraints.txt"
DOCKERFILES = sorted(p.name for p in IMAGES.glob("*.Dockerfile"))


def lock_images() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_images", ROOT / "hack" / "lock_images.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"constraints.txt: {line!r} is not an exact pin"
        name = canonicalize_name(match[1])
        assert name == match[1], f"constraints.txt: {line!r}: write the canonical name {name}"
        assert name not in pins, f"constraints.txt: {name} pinned twice"
        pins[name] = match[2]
    assert list(pins) == sorted(pins), "constraints.txt: keep it sorted (hack/lock_images.py writes it so)"
    return pins


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_builder_installs_through_the_lock(name: str) -> None:
    text = (IMAGES / name).read_text()
    builder = text[: text.index(" AS ", text.index("FROM ${PYTHON_IMAGE} AS builder") + 40)]
    assert "COPY images/constraints.txt images/constraints.txt\n" in builder, name
    installs = re.findall(r"/opt/venv/bin/pip install ([^\\\n]+)", builder)
    assert installs, f"{name}: no install into the venv"
    for args in installs:
        assert "--constraint images/constraints.txt" in args, f"{name}: pip install {args} ignores the lock"
    assert "--constraint" not in builder.split("COPY images/constraints.txt")[0], "the lock is copied before use"


def test_the_lock_pins_exactly() -> None:
    pins = locked()
    assert "moeops" not in pins  # the wheel itself is built from the checkout
    assert len(pins) > 50  # the closure, not just the direct requirements


def test_the_lock_covers_what_the_images_install() -> None:
    module = lock_images()
    extras = set()
    for name in DOCKERFILES:
        extras |= set(re.findall(r'pip install "\$1\[([\w,]+)\]"', (IMAGES / name).read_text())[0].split(","))
    assert extras <= set(module.IMAGE_EXTRAS), f"hack/lock_images.py IMAGE_EXTRAS misses {extras}"
    needed = set(module.pins())  # the closure of those extras as this environment resolved it
    missing = needed - set(locked())
    assert not missing, f"not in images/constraints.txt: {sorted(missing)}: run hack/lock_images.py"


def test_each_pin_satisfies_pyproject() -> None:
    pins = locked()
    module = lock_images()
    for req in module.project_requirements(module.IMAGE_EXTRAS):
        assert isinstance(req, Requirement)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} (pyproject.toml) is not pinned: run hack/lock_images.py"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} in images/constraints.txt does not satisfy {req} (pyproject.toml): "
            "pip install -e '.[dev]' and run hack/lock_images.py"
        )
