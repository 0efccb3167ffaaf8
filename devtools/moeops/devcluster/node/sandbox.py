"""The container's first process on the process node: builds the container's view of the machine, then execs.

Run as root by the node (`python -I -S sandbox.py SPEC.json`, stdlib only, so that it starts in milliseconds),
it does in its own process what a container runtime does before it starts the entry point:

1. joins the container's cgroups (every process it starts stays in them: CPU accounting, memory limit, kill);
2. takes a private mount namespace and its own UTS namespace (the pod's hostname);
3. builds the root: an overlay whose lower layer is this machine's `/` (the "image"), with a throw-away upper
   layer on a tmpfs (a restarted container starts from a clean layer, as in a real runtime); /proc, /sys and /dev
   are bound in; each volume is bound at its mountPath (read-only where asked); the node's hosts file is bound at
   /etc/hosts; the image's users are added to /etc/passwd; the root is made read-only for
   `readOnlyRootFilesystem`;
4. chroots into it, changes to the working directory, drops to the pod's uid/gid/groups, asks for SIGKILL if the
   node dies (no orphan keeps training after a crashed node), and execs the command.

A failure before the exec exits 128 with the reason on stderr (the container's log), which the node reports as
the container's StartError.
"""

import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
START_ERROR = 128

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: Path, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc.mount(
        source.encode() if source else None,
        str(target).encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(result, f"mount {source} on {target}")


def bind(source: Path, target: Path, read_only: bool) -> None:
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    mount(str(source), target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def build_root(spec: dict[str, Any]) -> Path:
    staging = Path(spec["staging"])
    staging.mkdir(parents=True, exist_ok=True)
    mount("tmpfs", staging, "tmpfs", MS_NOSUID, "mode=0755")
    upper, work, root = (staging / d for d in ("upper", "work", "root"))
    for folder in (upper, work, root):
        folder.mkdir()
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    for system in ("/proc", "/sys", "/dev"):
        mount(system, inside(root, system), None, MS_BIND | MS_REC)
    for item in spec["binds"]:
        bind(Path(item["source"]), inside(root, item["target"]), item["readOnly"])
    for folder in spec["traverse"]:  # e.g. /root, 0700 on the host, holding the interpreter of the venv
        path = inside(root, folder)
        if path.is_dir():
            path.chmod(path.stat().st_mode | 0o055)
    with inside(root, "/etc/passwd").open("a") as passwd, inside(root, "/etc/group").open("a") as group:
        for name, uid, gid, home in spec["users"]:
            passwd.write(f"{name}:x:{uid}:{gid}::{home}:/usr/sbin/nologin\n")
            group.write(f"{name}:x:{gid}:\n")
            inside(root, home).mkdir(parents=True, exist_ok=True)
            os.chown(inside(root, home), uid, gid)
    inside(root, "/etc/hostname").write_text(spec["hostname"] + "\n")
    inside(root, spec["workdir"]).mkdir(parents=True, exist_ok=True)
    if spec["readOnlyRoot"]:
        mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    return root


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        for cgroup in spec["cgroups"]:
            (Path(cgroup) / "cgroup.procs").write_text("0")
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
        mount(None, Path("/"), None, MS_REC | MS_PRIVATE)
        name = spec["hostname"].encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
        root = build_root(spec)
        os.chroot(root)
        os.chdir(spec["workdir"])
        os.setgroups(spec["groups"])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
        _check(_libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl")
        if os.getppid() != spec["nodePid"]:
            raise OSError("the node exited before the container started")
        argv, env = spec["argv"], spec["env"]
        os.execvpe(argv[0], argv, env)
    except OSError as error:
        print(f"process node: cannot start container: {error}", file=sys.stderr, flush=True)
        os._exit(START_ERROR)


if __name__ == "__main__":
    main()
