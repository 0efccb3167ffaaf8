"""The one line `moeops train` prints when a worker fails: which rank died, how, and what a rerun does.

torchrun's own report (a table per failure, the workers' tracebacks: the dead worker's peers fail too, on a lost
collective) says nothing of checkpoints. The line names the first worker that failed, the signal that killed it
(as a shell would) or its exit code, and the step a rerun of the same command resumes from (the newest complete
checkpoint; a rerun is bitwise the same as an uninterrupted run), or that it starts over.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from moeops.checkpoint.layout import latest


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (exit {128 - exitcode})"
    return f"exited with code {exitcode}"


def failure_line(rank: int, pid: int, exitcode: int, checkpoint_root: Path) -> str:
    """What died (the first failed worker: global rank, pid, signal or exit code) and where a rerun resumes."""
    found = latest(checkpoint_root)
    rerun = (
        f"rerunning the same command resumes from step {found[0]} ({found[1]})"
        if found
        else f"no checkpoint in {checkpoint_root} yet: rerunning starts over from step 0"
    )
    return f"moeops train: worker rank {rank} (pid {pid}) {_how(exitcode)}; {rerun}"


def checkpoint_root_of(config_text: str, worker_args: list[str]) -> Path:
    """Where the workers checkpoint: `--checkpoint-dir` among their arguments, else the config's directory."""
    for i, arg in enumerate(worker_args):
        if arg == "--checkpoint-dir" and i + 1 < len(worker_args):
            return Path(worker_args[i + 1])
        if arg.startswith("--checkpoint-dir="):
            return Path(arg.split("=", 1)[1])
    return Path(json.loads(config_text)["checkpoint"]["directory"])
