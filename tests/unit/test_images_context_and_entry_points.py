"""What the images are built from and what they run, checked without a container engine: a build context
(.dockerignore) that holds what the builders COPY and nothing else, a bake file and README that name every image,
and entry points that exist and import without the runtime extras in the control-plane images.
The Dockerfiles themselves: tests/unit/test_images_dockerfiles.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from image_dockerfiles import CONVENTIONS, DOCKERFILES, IMAGES, ROOT, closure, copy_parts, parse, pyproject


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

    for left_out in (".venv/bin/python", ".cache/pip/x", ".tmp/x", ".git/HEAD", "tests/unit/test_images_dockerfiles.py",
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
