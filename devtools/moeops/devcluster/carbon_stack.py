"""Carbon accounting on the local platform: the aggregator and one node's agent, as host processes.

`start_carbon(kubeconfig, nats_url, node_name, work_dir)` starts both (`python -m moeops.carbon aggregator|agent`,
logs in `work_dir/carbon-aggregator.log` and `work_dir/carbon-agent.log`, the agent's spool in
`work_dir/carbon-spool`), waits until each has said it runs, and returns a `CarbonStack` whose `stop()` ends the
agent first (SIGTERM: one last commit, then up to 5 s to send it) and then the aggregator. Used by `hack/demo.py`
and the journey tests through `platform.LocalPlatform`.

What the processes are given (see `moeops.carbon.cli` for every setting):

    both         MOEOPS_NATS_URL=<nats_url>
    aggregator   MOEOPS_CARBON_PUE=1.0           a workstation has no facility overhead (`local_meter.WORKSTATION_PUE`,
                                                 as for a local `moeops train`); a data centre's is about 1.56
    agent        MOEOPS_NODE_NAME=<node_name>    the process node's name: the agent lists the pods bound to it
                 MOEOPS_CARBON_REGION=world      the static table's world average (481 g/kWh), unless `region`
                 KUBECONFIG=<kubeconfig>         for `list pods` (labels: a pod's MoETrainingJob or InferenceService),
                 KUBERNETES_SERVICE_HOST=""      and never an in-cluster config (a CI runner in a pod has one)
                 MOEOPS_CARBON_SPOOL_DIR=<work_dir>/carbon-spool
                 MOEOPS_CARBON_CGROUP_ROOT=<cgroup2 mount>/<this process's own cgroup>
                                                 where the process node, started by the same parent, makes its
                                                 `moeops-<node>/kubepods/pod<uid>/<container id>` cgroups
                 MOEOPS_CARBON_POLL_S=1

No GPU here: the agent finds no NVML (MOEOPS_CARBON_GPUS=auto), says so in its log, and measures the CPU: RAPL
where `/sys/class/powercap` is readable, else the labelled estimate (5 W per busy logical CPU; `cpuEstimated: true`
in the status), split over the pods by their cgroup v2 `cpu.stat`. On a machine with NVML the GPU source runs
instead and finds the pods' GPU processes through their cgroups (no kubelet socket here).

How the energy reaches `kubectl get mtj`: agent → stream MOEOPS_CARBON → aggregator (ledger) → KV bucket
`moeops-carbon`, key `workload.<namespace>.MoETrainingJob.<job>` → the operator's timer
(`operator/moeops/operator/handlers/carbon.py`) → `.status.carbon`. The operator needs only MOEOPS_NATS_URL (the same
bus; without it nothing is read) and a job without `spec.carbon.enabled: false`. Its timer reads every 30 s
(`CARBON_INTERVAL_S`, first 5 s after it sees the job) and keeps reading for 10 minutes after the job finished
(`SETTLE_S`): a summary printed at Succeeded should wait up to ~35 s for `.status.carbon.lastUpdate` to pass
`.status.completionTime` (the agent's last deltas reach the bucket within about 2 s of the pods' end).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from moeops.api import env
from moeops.carbon import cli
from moeops.carbon.meter.local_meter import DEFAULT_REGION, WORKSTATION_PUE
from moeops.carbon.meter.pod_cpu import find_cgroup2_root

from .processes import Component, wait_until

AGGREGATOR_STARTED = "carbon aggregator: "
AGENT_STARTED = "carbon agent on "
"""The lines `moeops.carbon.cli` logs once its process runs (settings read, NVML tried, sources made)."""
START_TIMEOUT_S = 60.0


def own_cgroup_v2(proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> str:
    """This process's cgroup v2 path (the `0::<path>` line), `/` where there is none."""
    for line in proc_self_cgroup.read_text().splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return "/"


def node_cgroup_root() -> Path | None:
    """The cgroup v2 directory under which the process node, a child of this process, makes its pods' cgroups:
    the cgroup2 mount joined with this process's own cgroup (None without cgroup v2)."""
    mount = find_cgroup2_root()
    return None if mount is None else mount / own_cgroup_v2().lstrip("/")


@dataclass
class CarbonStack:
    aggregator: Component
    agent: Component

    def check(self) -> None:
        """Raises `PlatformError` (with the log's tail) when either process has ended."""
        self.aggregator.check()
        self.agent.check()

    def stop(self) -> None:
        self.agent.stop(timeout_s=15.0)  # its last commit and sends: up to AgentSettings.drain_timeout_s
        self.aggregator.stop(timeout_s=15.0)

    def __enter__(self) -> CarbonStack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def aggregator_env(nats_url: str, *, pue: float = WORKSTATION_PUE) -> dict[str, str]:
    return {env.NATS_URL: nats_url, cli.CARBON_PUE: str(pue)}


def agent_env(
    kubeconfig: Path,
    nats_url: str,
    node_name: str,
    spool_dir: Path,
    *,
    region: str = DEFAULT_REGION,
    cgroup_root: Path | None = None,
    poll_s: float = 1.0,
) -> dict[str, str]:
    settings = {
        env.NATS_URL: nats_url,
        env.NODE_NAME: node_name,
        env.CARBON_REGION: region,
        "KUBECONFIG": str(kubeconfig),
        "KUBERNETES_SERVICE_HOST": "",  # empty: the client's in-cluster loader refuses it and reads KUBECONFIG
        cli.CARBON_SPOOL_DIR: str(spool_dir),
        cli.CARBON_POLL_S: str(poll_s),
    }
    if cgroup_root is not None:
        settings[cli.CARBON_CGROUP_ROOT] = str(cgroup_root)
    return settings


def start_carbon(
    kubeconfig: Path,
    nats_url: str,
    node_name: str,
    work_dir: Path,
    *,
    region: str = DEFAULT_REGION,
    pue: float = WORKSTATION_PUE,
    cgroup_root: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> CarbonStack:
    """The aggregator and `node_name`'s agent, running (module docstring). `cgroup_root`: where the agent looks for
    the pods' cgroups (default: `node_cgroup_root()`). Raises `PlatformError` when either ends or stays silent."""
    work_dir.mkdir(parents=True, exist_ok=True)
    root = cgroup_root if cgroup_root is not None else node_cgroup_root()
    python = [sys.executable, "-m", "moeops.carbon"]
    spool = work_dir / "carbon-spool"
    stack = CarbonStack(
        Component("carbon-aggregator", [*python, "aggregator"], work_dir / "carbon-aggregator.log",
                  aggregator_env(nats_url, pue=pue)),
        Component("carbon-agent", [*python, "agent"], work_dir / "carbon-agent.log",
                  agent_env(kubeconfig, nats_url, node_name, spool, region=region, cgroup_root=root)),
    )  # fmt: skip
    try:
        stack.aggregator.start()  # first: it creates the stream (the agent spools until then, and loses nothing)
        stack.agent.start()
        for component, line in ((stack.aggregator, AGGREGATOR_STARTED), (stack.agent, AGENT_STARTED)):
            wait_until(f"the {component.name} to start", partial(_logged, component, line), timeout_s, stack.check)
    except BaseException:
        stack.stop()
        raise
    return stack


def _logged(component: Component, line: str) -> bool:
    path = component.log_path
    return path.exists() and line in path.read_text(errors="replace")
