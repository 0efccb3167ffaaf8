"""What the image tests read: images/*.Dockerfile parsed into stages and instructions, each image's convention
(its name, its command as the chart and the operator run it, its extras), and the project's extras from pyproject.
Used by tests/unit/test_images_dockerfiles.py and tests/unit/test_images_context_and_entry_points.py."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
HADOLINT_CONFIG = IMAGES / ".hadolint.yaml"
USER_ID = 65532
VENV = "/opt/venv"


@dataclass(frozen=True)
class Convention:
    image: str
    extras: frozenset[str]
    cmd: tuple[str, ...]
    """The image's default command (exec form, no ENTRYPOINT)."""
    commands: tuple[tuple[str, ...], ...]
    """Every command the chart or the operator runs in it."""
    torch: bool


# Fixed with the chart (charts/) and the operator (moeops.operator.children: workers and model servers).
CONVENTIONS = {
    "operator.Dockerfile": Convention(
        "moeops-operator",
        frozenset({"bus", "carbon", "telemetry"}),
        ("moeops", "operator", "run"),
        (("moeops", "operator", "run"), ("python", "-m", "moeops.rebalancer"), ("moeops-carbon", "aggregator")),
        torch=False,
    ),
    "carbon-agent.Dockerfile": Convention(
        "moeops-carbon-agent",
        frozenset({"bus", "carbon", "telemetry"}),
        ("moeops-carbon", "agent"),
        (("moeops-carbon", "agent"),),
        torch=False,
    ),
    "runtime.Dockerfile": Convention(
        "moeops-runtime",
        frozenset({"runtime", "serving", "telemetry"}),
        ("moeops", "--help"),
        (("moeops", "train", "--config"), ("moeops", "serve")),
        torch=True,
    ),
}
DOCKERFILES = sorted(CONVENTIONS)

# Not in a final stage: compilers, build systems, package managers' installs.
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|cmake|build-essential|python3?-dev|libc6?-dev|cargo|rustc|"
    r"pip3?\s+install|-m\s+pip\s+install|apt-get\s+install|apt\s+install|apk\s+add|uv\s+pip)\b"
)


# ---- a small Dockerfile reader (instructions, stages, global ARGs) ----


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    """The FROM reference with the global ARGs' defaults substituted."""
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def instructions(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments (and parser directives) dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "a continuation line at the end of the file"
    return out


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


@cache
def parse(name: str) -> Dockerfile:
    path = IMAGES / name
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions(path.read_text()):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            ref = substitute(words[0], args)
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(ref, alias))
        elif not stages:
            assert ins.keyword == "ARG", f"{name}:{ins.line}: only ARG may come before the first FROM"
            key, _, default = ins.args.partition("=")
            args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(path, args, stages)


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"line {ins.line}: not exec form"
    return value


def copy_parts(ins: Instruction) -> tuple[dict[str, str], list[str], str]:
    """COPY's --flags, sources and destination."""
    words = shlex.split(ins.args)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1], paths[-1]


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def closure(extras: set[str]) -> set[str]:
    """The distributions the project brings with `extras` (its own extras, as in `moeops[bus]`, followed)."""
    project = pyproject()["project"]
    names: set[str] = set()
    seen: set[str] = set()
    todo = sorted(extras)
    requirements = [Requirement(r) for r in project["dependencies"]]
    while requirements:
        for req in requirements:
            if canonicalize_name(req.name) == "moeops":
                todo += sorted(req.extras)
            else:
                names.add(canonicalize_name(req.name))
        requirements = []
        for extra in set(todo) - seen:
            requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
        seen |= set(todo)
        todo = []
    return names


def installed_extras(dockerfile: Dockerfile) -> set[str]:
    """The extras the builder installs the project's wheel with (`pip install "$1[a,b]"`)."""
    builder = dockerfile.stages[0]
    found = [m for ins in builder.all("RUN") for m in re.findall(r'pip install "\$1\[([\w,]+)\]"', ins.args)]
    assert len(found) == 1, f"{dockerfile.path.name}: one install of the built wheel with its extras, found {found}"
    return set(found[0].split(","))


# ---- hadolint ----
