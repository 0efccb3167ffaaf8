"""Which images the process node can run, and what each gives a container: the final stage of our own Dockerfile.

The node runs no image: a container's processes run from this machine's files. What an image would add to them
(ENV, WORKDIR, USER, ENTRYPOINT/CMD, the user its `useradd` creates) is read from `images/<name>.Dockerfile`'s last
stage, so a pod sees the same PATH, HOME and XDG_CACHE_HOME as in the real image. The image's virtualenv
(`VIRTUAL_ENV`, `/opt/venv`) is this machine's venv, mounted at that path by the sandbox. Any other image
(a repository that is not one of ours) cannot be pulled: the pod waits with `ErrImagePull`, as with a typo in a
real cluster.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH of the python:*-slim base image (and of most distributions)."""


@dataclass(frozen=True)
class ImageConfig:
    name: str
    env: dict[str, str] = field(default_factory=lambda: {"PATH": BASE_PATH})
    workdir: str = "/"
    uid: int = 0
    gid: int = 0
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    users: list[tuple[str, int, int, str]] = field(default_factory=list)
    """(name, uid, gid, home) of the accounts the image's `useradd` creates (added to the pod's /etc/passwd)."""
    venv: str = ""


class ImagePullError(LookupError):
    """Not an image of ours: the process node cannot run it (ErrImagePull)."""


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined, out = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            joined += line[:-1] + " "
            continue
        joined += line
        word, _, rest = joined.partition(" ")
        out.append((word.upper(), rest.strip()))
        joined = ""
    return out


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), value)


def _exec_form(args: str) -> list[str]:
    return list(json.loads(args)) if args.startswith("[") else ["/bin/sh", "-c", args]


def parse_dockerfile(name: str, text: str) -> ImageConfig:
    """The runtime configuration the last stage of a Dockerfile gives its image."""
    stages: list[list[tuple[str, str]]] = []
    for word, args in _instructions(text):
        if word == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append((word, args))
    env = {"PATH": BASE_PATH}
    workdir, uid, gid, entrypoint, cmd, users = "/", 0, 0, [], [], []
    for word, args in stages[-1] if stages else []:
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = _expand(value, env)
        elif word == "WORKDIR":
            workdir = args
        elif word == "USER":
            user, _, group = args.partition(":")
            uid, gid = int(user), int(group or user)
        elif word == "ENTRYPOINT":
            entrypoint = _exec_form(args)
        elif word == "CMD":
            cmd = _exec_form(args)
        elif word == "RUN" and "useradd" in args:
            found = {k: re.search(rf"--{k}\s+(\S+)", args) for k in ("uid", "gid", "home-dir")}
            account = args.split("useradd", 1)[1].split("&&")[0].split()[-1]
            if found["uid"]:
                account_gid = int(found["gid"].group(1)) if found["gid"] else int(found["uid"].group(1))
                home = found["home-dir"].group(1) if found["home-dir"] else f"/home/{account}"
                users.append((account, int(found["uid"].group(1)), account_gid, home))
    return ImageConfig(name, env, workdir, uid, gid, entrypoint, cmd, users, env.get("VIRTUAL_ENV", ""))


def repository(image: str) -> str:
    """`ghcr.io/moeops/moeops-runtime:0.1.0@sha256:…` → `moeops-runtime`."""
    path = image.split("@", 1)[0]
    last = path.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


@dataclass(frozen=True)
class ImageCatalog:
    """Our images by repository name: `moeops-<x>` is built from `images/<x>.Dockerfile`."""

    images_dir: Path

    def resolve(self, image: str) -> ImageConfig:
        name = repository(image)
        dockerfile = self.images_dir / f"{name.removeprefix('moeops-')}.Dockerfile"
        if not name.startswith("moeops-") or not dockerfile.is_file():
            known = sorted(f"moeops-{p.name.removesuffix('.Dockerfile')}" for p in self.images_dir.glob("*.Dockerfile"))
            raise ImagePullError(
                f"the process node runs only moeops images ({', '.join(known)}), from this machine's files; "
                f"{image!r} cannot be pulled"
            )
        return parse_dockerfile(name, dockerfile.read_text())
