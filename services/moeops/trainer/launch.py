"""`moeops train`: start the worker processes with torch's elastic launcher (torchrun).

Locally: `--nproc N` processes on this machine (standalone rendezvous). In a pod of the operator's Indexed
Job: the node count, node rank and rank-0 address come from the environment the operator sets, and each pod
starts `nproc_per_node` processes (one per GPU).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from moeops.api import env

from .errors import EXIT_PREEMPTED, ConfigError
from .failure_line import checkpoint_root_of, failure_line
from .preflight import check_config, load_config


def is_local(nproc: int | None) -> bool:
    """A run on this machine (`--nproc`, or no pod environment) rather than one pod of an Indexed Job."""
    return nproc is not None or env.NNODES not in os.environ


def launcher_args(config: Path, nproc: int | None, worker_args: list[str]) -> list[str]:
    """torchrun's arguments: standalone for a local run, static rendezvous from the pod's environment."""
    module = ["-m", "moeops.trainer.worker", "--config", str(config), *worker_args]
    if is_local(nproc):
        return ["--standalone", f"--nproc-per-node={nproc or 1}", *module]
    return [
        f"--nnodes={os.environ[env.NNODES]}",
        f"--nproc-per-node={os.environ.get(env.NPROC_PER_NODE, '1')}",
        f"--node-rank={os.environ.get(env.NODE_RANK, '0')}",
        f"--master-addr={os.environ[env.MASTER_ADDR]}",
        f"--master-port={os.environ.get(env.MASTER_PORT, '29500')}",
        *module,
    ]


def exit_code_of(worker_exitcode: int) -> int:
    """The pod's exit code for its first failed worker: the worker's own code, or 128 + N for a worker killed by
    signal N (as a shell reports it), so that the operator can tell the worker that was killed (137 for kill -9 or
    the OOM killer) from its peers, which exit 1 when their collectives lose it."""
    if worker_exitcode > 0:
        return worker_exitcode
    return 128 - worker_exitcode if worker_exitcode < 0 else 1


def world_size_of(nproc: int | None) -> int:
    """The processes torchrun will start in all: `--nproc` locally, nodes × processes per node in a pod."""
    if is_local(nproc):
        return nproc or 1
    return int(os.environ[env.NNODES]) * int(os.environ.get(env.NPROC_PER_NODE, "1"))


def launch(config: Path, nproc: int | None, worker_args: list[str]) -> int:
    """Run the workers to completion; returns the exit code of the first failed worker, else 0. A config that
    cannot run is refused here, before any worker starts (exit 78, as a worker would)."""
    try:
        check_config(load_config(config), world_size_of(nproc))
    except ConfigError as exc:
        return exc.report()
    # torch only now: importing it takes seconds on a busy node, and a refused config needs none of it.
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    args = get_args_parser().parse_args(launcher_args(config, nproc, worker_args))
    try:
        torchrun(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as exc:
        rank, first = min(exc.failures.items(), key=lambda failed: failed[1].timestamp)
        root = checkpoint_root_of(config.read_text(encoding="utf-8"), worker_args)
        print(failure_line(rank, first.pid, first.exitcode, root), file=sys.stderr, flush=True)
        return exit_code_of(first.exitcode)
    except SignalException:
        # SIGTERM (preemption): torchrun passed it on to the workers, which checkpointed and stopped.
        return EXIT_PREEMPTED
    return 0
