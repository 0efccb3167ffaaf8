"""Carbon node agent overhead: CPU time of the polling process per wall second, 8 fake GPUs polled at 10 Hz.

Variants, run one after the other in this process for `--seconds` each, at `--hz`:

- `nvml-poll` (the baseline): the bare `NvmlReader.poll()` + `report()` loop, no attribution, no spool: what
  reading the GPUs costs at all.
- `source`: the agent's real source (`NodeSource`): NVML, the device map (a dict behind the TTL cache; the
  kubelet's gRPC `List` runs once per 10 s in production), SM samples of the 4 shared GPUs, PIDs to pods through
  /proc/<pid>/cgroup files in a tmp tree, pod labels from a list, CPU energy (this machine's /proc/stat; RAPL or
  the estimate) every second, attribution, deltas.
- `agent`: `NodeAgent.poll_once()`: the source plus the spool (one write + fsync per poll, in a tmp dir). The
  sender (JetStream publishes) is not measured: it runs on the same loop but sends the same deltas whatever the
  source.

Figure: CPU seconds (`time.process_time`) per wall second, as a percentage of one core; ratio to the baseline.
Goal (issue 5): the agent ≤ 1 % of one core at 10 Hz with 8 GPUs.

The fake NVML's calls are Python functions (a few µs); the real driver's calls are ioctls that cost from ~10 µs
(power) to ~1 ms (process utilization on some drivers), so these figures are the agent's own Python cost, not a
measurement of NVML on a GPU node.

    .venv/bin/python benchmarks/carbon_agent.py               # 30 s per variant at 10 Hz
    .venv/bin/python benchmarks/carbon_agent.py --seconds 5   # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes.fake_nvml import FakeClock, FakeGpu, FakeNvml, Trace
from moeops.bus.connection import ConnectionOptions
from moeops.carbon.meter.attribution import PodInfo
from moeops.carbon.meter.nvml_reader import NvmlReader
from moeops.carbon.meter.rapl import CpuEnergyMeter
from moeops.carbon.node.agent import AgentSettings, NodeAgent
from moeops.carbon.node.node_source import NodeSource, NodeSourceSettings
from moeops.carbon.node.spool import Spool
from moeops.carbon.podresources.devices import ContainerRef, DeviceMap

GPUS = 8
SHARED = 4
"""GPUs 0–3 are shared by two pods each (SM sampling), 4–6 held by one pod, 7 by nobody."""


class WallClock(FakeClock):
    """The fake NVML's clock, following real time (the traces' power then follows the wall clock)."""

    def __init__(self) -> None:
        super().__init__()
        self._start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self._start


def node(proc_root: Path) -> tuple[FakeNvml, DeviceMap, list[PodInfo]]:
    """8 GPUs, 11 pods (a training job's workers and notebooks), their GPU processes' cgroup files."""
    gpus, holders, pods = [], {}, []
    pid = 1000
    for index in range(GPUS):
        uuid = f"GPU-{index:08d}-0000-0000-0000-000000000000"
        owners = 2 if index < SHARED else (1 if index < GPUS - 1 else 0)
        sm: dict[int, float] = {}
        refs = []
        for slot in range(owners):
            pid += 1
            uid = f"{index:08d}-0000-0000-0000-{slot:012d}"
            cid = f"{pid:064x}"
            name = f"moe-10b-{index}-{slot}"
            labels = {"moeops.dev/training-job": "moe-10b"} if slot == 0 else {"app": "notebook"}
            pods.append(PodInfo("ml", name, uid, labels, {cid: "worker"}))
            refs.append(ContainerRef("ml", name, "worker"))
            sm[pid] = 60.0 if slot == 0 else 20.0
            (proc_root / str(pid)).mkdir(parents=True)
            slice_ = f"kubepods-pod{uid.replace('-', '_')}.slice"
            (proc_root / str(pid) / "cgroup").write_text(f"0::/kubepods.slice/{slice_}/cri-containerd-{cid}.scope\n")
        gpus.append(FakeGpu(uuid, Trace.sine(250.0, 100.0, 7.0 + index), sm_percent=sm))
        if refs:
            holders[uuid] = tuple(refs)
    (proc_root / "stat").symlink_to("/proc/stat")  # the node's CPU time, beside the fake processes
    return FakeNvml(gpus, clock=WallClock()), holders, pods


def measure(poll: Callable[[], object], seconds: float, hz: float) -> tuple[int, float, float]:
    """Polls at `hz` for `seconds` (sleeping to the next tick); (polls, CPU s, wall s)."""
    period = 1.0 / hz
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    polls, deadline = 0, start_wall
    while time.perf_counter() - start_wall < seconds:
        poll()
        polls += 1
        deadline += period
        time.sleep(max(deadline - time.perf_counter(), 0.0))
    return polls, time.process_time() - start_cpu, time.perf_counter() - start_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--commit-s", type=float, default=1.0, help="the agent's commit interval")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        nvml, holders, pods = node(Path(tmp) / "proc")
        reader = NvmlReader(nvml, clock=nvml.clock)
        reader.open()
        settings = NodeSourceSettings("node-a", "de", proc_root=Path(tmp) / "proc")
        source = NodeSource(reader, nvml, settings, devices=lambda: holders, pods=lambda: pods, cpu=CpuEnergyMeter())
        timing = AgentSettings(poll_interval_s=1 / args.hz, commit_interval_s=args.commit_s)
        agent = NodeAgent(source, Spool(Path(tmp) / "spool"), ConnectionOptions(), timing)
        variants: dict[str, Callable[[], object]] = {
            "nvml-poll": lambda: (reader.poll(), reader.report()),
            "source": source,
            "agent": agent.poll_once,
        }
        print(f"{GPUS} fake GPUs ({SHARED} shared by 2 pods), {args.hz:g} Hz, {args.seconds:g} s per variant, "
              f"agent commits every {args.commit_s:g} s")  # fmt: skip
        print(f"{'variant':<10} {'polls':>6} {'CPU s':>7} {'wall s':>7} {'% core':>7} {'ms/poll':>8} {'vs base':>8}")
        base = None
        for name, poll in variants.items():
            polls, cpu_s, wall_s = measure(poll, args.seconds, args.hz)
            share = 100 * cpu_s / wall_s
            base = base if base is not None else share
            print(f"{name:<10} {polls:>6} {cpu_s:>7.3f} {wall_s:>7.2f} {share:>6.2f}% {1e3 * cpu_s / polls:>8.3f} "
                  f"{share / base:>7.2f}x")  # fmt: skip
        print(
            f"deltas spooled: {agent.spool.counters().appended}; polls: {agent.counters.polls}, "
            f"commits: {agent.counters.commits}; "
            f"source degraded: {dict(source.degraded) or 'none'}; fallback polls: {source.fallback_polls}"
        )
        print("goal: agent <= 1 % of one core (fake NVML: the real driver's call cost is not included)")


if __name__ == "__main__":
    main()
