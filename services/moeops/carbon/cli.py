"""`python -m moeops.carbon agent|aggregator`: the container entry points of carbon accounting.

    agent        the node agent (DaemonSet): NVML energy → on-disk spool → stream MOEOPS_CARBON
    aggregator   one per cluster (Deployment): stream → carbon ledger → KV bucket moeops-carbon

Settings come from the environment (NATS: MOEOPS_NATS_*, see `moeops.bus.connection`):

    MOEOPS_NODE_NAME            the node (the DaemonSet sets it from the downward API, spec.nodeName)
    MOEOPS_CARBON_REGION        the node's grid region (a key of the intensity table, e.g. a cloud region)
    MOEOPS_CARBON_SPOOL_DIR     the agent's spool (a hostPath, so that it outlives the pod); default below
    MOEOPS_CARBON_POLL_S        seconds between the agent's polls (default 1)
    MOEOPS_CARBON_PUE           the aggregator's power usage effectiveness (default: ledger.DEFAULT_PUE)
    MOEOPS_CARBON_GPU_IDLE_W    the agent's GPU idle power in watts (default: learned per GPU from idle spans)
    MOEOPS_CARBON_KUBELET_SOCKET  the kubelet's pod-resources socket (default: podresources.client.DEFAULT_SOCKET)
    MOEOPS_CARBON_NVML_ONLY     `true`: no pod attribution, every GPU's energy is node idle (`nvml_idle_source`)
    MOEOPS_CARBON_GPUS          `auto` (default): NVML where it starts, else CPU only; `required`: no NVML ends the
                                agent (exit 69); `none`: CPU only, NVML not tried
    MOEOPS_CARBON_CGROUP_ROOT   the cgroup v2 tree holding the pods' `kubepods` cgroups (default: the cgroup2 mount
                                of /proc/self/mountinfo, /sys/fs/cgroup or, on a hybrid host, /sys/fs/cgroup/unified)
    MOEOPS_CARBON_WATTS_PER_CPU the CPU estimate's watts per logical CPU where RAPL is not readable (default 5)
    MOEOPS_HEALTH_ADDR, MOEOPS_HEALTH_PORT, MOEOPS_HEALTH_STALE_S  (or --health-addr, --health-port,
                                --health-stale-s) /healthz and /readyz of either: `moeops.bus.health`

The agent attributes energy to pods (`node_source.NodeSource`): the kubelet's device map, or, while its socket is
absent or silent, the GPU processes' cgroups (the agent's pod needs hostPID); pod labels from `list pods` on this
node (the agent's RBAC: list pods). Where neither is wanted (no socket mounted, no hostPID), MOEOPS_CARBON_NVML_ONLY
books all GPU energy as node idle, as the agent did before attribution; the log says which mode runs.
Both publish OpenTelemetry metrics through the API (`telemetry`: hw.energy and hw.power per GPU and pod from the
agent, moeops.carbon.emissions per workload from the aggregator) on the process's global MeterProvider, which
`moeops.telemetry.setup` configures with an OTLP exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set (service.name
moeops-carbon-agent / moeops-carbon-aggregator); without it they stay on the API's no-op and cost next to nothing.
Without NVML (no driver, no GPU) the agent measures the CPU only (`cpu_source.CpuNodeSource`: RAPL, else the
labelled estimate, split over the pods by their cgroup v2 CPU time) and logs a warning saying so. With
MOEOPS_CARBON_GPUS=required (or MOEOPS_CARBON_NVML_ONLY, which has nothing to measure without NVML) a machine
without NVML ends the agent with a one-line message and exit status 69 (EX_UNAVAILABLE), not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from nats.aio.client import Client

from moeops import telemetry as otel
from moeops.api import env
from moeops.bus.connection import BusConfigError, ConnectionOptions
from moeops.bus.graceful_stop import run_until_stopped, stop_on_signals
from moeops.bus.health import HealthSettings, add_health_arguments, health_settings
from moeops.bus.health_server import HealthServer, jetstream_reachable, nats_connected, started
from moeops.bus.subjects import CARBON_BUCKET, CARBON_STREAM
from moeops.carbon.accounting.aggregator import CarbonAggregator
from moeops.carbon.accounting.intensity import default_static_table
from moeops.carbon.accounting.ledger import DEFAULT_PUE, DeltaId, EnergyDelta
from moeops.carbon.meter.nvml_reader import NvmlReader, NvmlUnavailable
from moeops.carbon.meter.pod_cpu import MOUNTINFO, find_cgroup2_root
from moeops.carbon.meter.rapl import DEFAULT_WATTS_PER_CPU, CpuEnergyMeter
from moeops.carbon.node.agent import AgentSettings, DeltaSource, NodeAgent
from moeops.carbon.node.cpu_source import CpuNodeSource, CpuSourceSettings
from moeops.carbon.node.node_source import NodeSource, NodeSourceSettings, SourceNvmlApi, kube_pod_lister
from moeops.carbon.node.poll_telemetry import PollTelemetry
from moeops.carbon.node.spool import Spool
from moeops.carbon.node.telemetry import CarbonTelemetry, GpuReading, carbon_meter
from moeops.carbon.podresources.client import DEFAULT_SOCKET, PodResourcesClient

CARBON_REGION = env.CARBON_REGION
CARBON_SPOOL_DIR = "MOEOPS_CARBON_SPOOL_DIR"
CARBON_POLL_S = "MOEOPS_CARBON_POLL_S"
CARBON_PUE = "MOEOPS_CARBON_PUE"
CARBON_GPU_IDLE_W = "MOEOPS_CARBON_GPU_IDLE_W"
CARBON_KUBELET_SOCKET = "MOEOPS_CARBON_KUBELET_SOCKET"
CARBON_NVML_ONLY = "MOEOPS_CARBON_NVML_ONLY"
CARBON_GPUS = "MOEOPS_CARBON_GPUS"
CARBON_CGROUP_ROOT = "MOEOPS_CARBON_CGROUP_ROOT"
CARBON_WATTS_PER_CPU = "MOEOPS_CARBON_WATTS_PER_CPU"
GPU_MODES = ("auto", "required", "none")
FALLBACK_CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_SPOOL_DIR = "/var/lib/moeops/carbon-spool"
EX_UNAVAILABLE = 69
"""sysexits.h: a service the program needs (here NVML) is not there."""
EX_CONFIG = 78

logger = logging.getLogger(__name__)


def nvml_idle_source(
    reader: NvmlReader, node: str, region: str, telemetry: CarbonTelemetry | None = None
) -> DeltaSource:
    """Each GPU's energy since the previous call, as the node's idle energy (the NVML-only mode); meters are
    named `<node>/<gpu uuid>`. The spool gives epoch and sequence (the zeros here are placeholders). `telemetry`
    gets each call's energy and latest power per GPU, none of it a pod's."""
    previous: dict[str, float] = {}

    def deltas() -> list[EnergyDelta]:
        reader.poll()
        now = datetime.now(UTC)
        out = []
        readings = []
        for gpu in reader.report():
            total = gpu.energy.energy_j
            if total is None:
                continue
            energy_j = max(0.0, total - previous.get(gpu.gpu.uuid, 0.0))
            previous[gpu.gpu.uuid] = total
            readings.append(GpuReading(gpu.gpu.uuid, energy_j, gpu.energy.last_power_w, name=gpu.gpu.name))
            meter = DeltaId(source=f"{node}/{gpu.gpu.uuid}", epoch=0, sequence=0)
            out.append(
                EnergyDelta(id=meter, node=node, region=region, at=now, key=None, gpu_energy_j=energy_j, cpu_energy_j=0)
            )
        if telemetry is not None:
            try:
                telemetry.record_poll(node, readings)
            except ValueError:  # metrics must never lose the poll's deltas (the NVML totals are taken already)
                logger.exception("carbon telemetry refused a poll")
        return out

    return deltas


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes")


def open_nvml(environ: Mapping[str, str]) -> NvmlReader | None:
    """NVML started (the caller closes it), or None where the settings allow the agent to go on without it
    (MOEOPS_CARBON_GPUS); raises NvmlUnavailable where they do not."""
    mode = environ.get(CARBON_GPUS, "").strip().lower() or "auto"
    if mode not in GPU_MODES:
        raise ValueError(f"{CARBON_GPUS} must be one of {', '.join(GPU_MODES)}, not {mode!r}")
    if mode == "none":
        logger.warning("%s=none: NVML not tried, no GPU energy is measured on this node", CARBON_GPUS)
        return None
    reader = NvmlReader()
    try:
        reader.open()
    except NvmlUnavailable as exc:
        if mode == "required" or _flag(environ, CARBON_NVML_ONLY):
            raise
        logger.warning("NVML is not available (%s): NO GPU energy is measured on this node, only the CPU's; set "
                       "%s=required to stop the agent instead", exc, CARBON_GPUS)  # fmt: skip
        return None
    return reader


def cgroup_root(environ: Mapping[str, str], mountinfo: Path = MOUNTINFO) -> Path:
    """The cgroup v2 tree the pods' cgroups are read from: configured, else the cgroup2 mount (logged)."""
    if configured := environ.get(CARBON_CGROUP_ROOT, "").strip():
        return Path(configured)
    found = find_cgroup2_root(mountinfo)
    if found is None:
        logger.warning("no cgroup2 mount in /proc/self/mountinfo: pods' CPU time cannot be read, their CPU energy "
                       "is booked as the node's (set %s)", CARBON_CGROUP_ROOT)  # fmt: skip
        return FALLBACK_CGROUP_ROOT
    return found


def cpu_meter(environ: Mapping[str, str]) -> CpuEnergyMeter:
    return CpuEnergyMeter(watts_per_cpu=float(_setting(environ, CARBON_WATTS_PER_CPU, str(DEFAULT_WATTS_PER_CPU))))


def cpu_only_source(environ: Mapping[str, str], node: str, region: str) -> DeltaSource:
    """The source of a node without NVML: the CPU packages' energy over the pods (`CpuNodeSource`)."""
    root = cgroup_root(environ)
    logger.info("carbon agent on %s: CPU only (no GPU); CPU energy by RAPL or the estimate, split over pods by "
                "cgroup v2 cpu.stat of the kubepods hierarchies under %s, pod labels from the API server",
                node, root)  # fmt: skip
    settings = CpuSourceSettings(node, region, cgroup_root=root)
    return CpuNodeSource(settings, pods=kube_pod_lister(node), cpu=cpu_meter(environ))


def attributed_source(
    reader: NvmlReader,
    kubelet: PodResourcesClient,
    environ: Mapping[str, str],
    node: str,
    region: str,
    telemetry: CarbonTelemetry,
) -> DeltaSource:
    """The agent's source as the settings ask: pods attributed (`NodeSource`), or NVML only; logs which. Each
    call of either feeds `telemetry` (`CarbonTelemetry.record_poll`)."""
    if _flag(environ, CARBON_NVML_ONLY):
        logger.warning("%s is set: NVML only, every GPU's energy is booked as node idle (no pod attribution)",
                       CARBON_NVML_ONLY)  # fmt: skip
        return nvml_idle_source(reader, node, region, telemetry)
    if not kubelet.socket_path.is_socket():
        logger.warning("kubelet pod-resources socket %s is absent: GPUs are attributed through their processes' "
                       "cgroups (needs hostPID); set %s=true to book all GPU energy as node idle instead",
                       kubelet.socket_path, CARBON_NVML_ONLY)  # fmt: skip
    idle_w = environ.get(CARBON_GPU_IDLE_W, "").strip()
    settings = NodeSourceSettings(node, region, gpu_idle_power_w=float(idle_w) if idle_w else None,
                                  cgroup_root=cgroup_root(environ))  # fmt: skip
    logger.info("attributing energy to pods; GPU idle power %s", f"{idle_w} W" if idle_w else "measured per GPU")
    # The module the reader initialised (imports are cached): the process calls need its handles.
    nvml = cast(SourceNvmlApi, importlib.import_module("pynvml"))
    return NodeSource(reader, nvml, settings, devices=kubelet.devices, pods=kube_pod_lister(node),
                      cpu=cpu_meter(environ), on_split=PollTelemetry(telemetry, node, reader))  # fmt: skip


def _setting(environ: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = environ.get(name, "").strip() or default
    if value is None:
        raise BusConfigError(f"{name} is not set")
    return value


def _serve(
    run: Callable[[asyncio.Event], Awaitable[None]], health: HealthServer, what: str, ready: asyncio.Event | None = None
) -> None:
    """Until SIGTERM/SIGINT, however far `run` got (see `moeops.bus.graceful_stop`)."""

    async def serve() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop, what)
        async with health:
            await run_until_stopped(run, stop, what=what, ready=ready)

    asyncio.run(serve())


def agent_health(agent: NodeAgent, settings: HealthSettings) -> HealthServer:
    """/readyz: the sender connected; /healthz: the poller polls (and the event loop is not blocked by a read)."""
    return HealthServer(settings, "carbon agent", [agent.heartbeat], [nats_connected(lambda: agent.client)])


def aggregator_health(aggregator: CarbonAggregator, settings: HealthSettings) -> HealthServer:
    """/readyz: connected, the consumer in place, the stream and the bucket answer; /healthz: the main loop goes
    round."""

    def client() -> Client | None:
        return aggregator.client

    return HealthServer(settings, "carbon aggregator", [aggregator.heartbeat], [
        nats_connected(client), started(aggregator.ready, "carbon consumer"),
        jetstream_reachable(client, streams=[CARBON_STREAM], buckets=[CARBON_BUCKET])])  # fmt: skip


def run_agent(environ: Mapping[str, str], health: HealthSettings | None = None) -> None:
    node = _setting(environ, env.NODE_NAME)
    region = _setting(environ, CARBON_REGION)
    settings = AgentSettings(poll_interval_s=float(_setting(environ, CARBON_POLL_S, "1")))
    options = ConnectionOptions.from_env(environ, name=f"moeops-carbon-agent-{node}")
    socket = Path(_setting(environ, CARBON_KUBELET_SOCKET, str(DEFAULT_SOCKET)))
    spool = Spool(Path(_setting(environ, CARBON_SPOOL_DIR, DEFAULT_SPOOL_DIR)))
    with contextlib.ExitStack() as stack:
        reader = open_nvml(environ)
        if reader is None:
            source = cpu_only_source(environ, node, region)
        else:
            stack.callback(reader.close)
            kubelet = stack.enter_context(PodResourcesClient(socket))
            logger.info("carbon agent on %s: %d GPU(s)", node, len(reader.gpus))
            source = attributed_source(reader, kubelet, environ, node, region, CarbonTelemetry(carbon_meter()))
        agent = NodeAgent(source, spool, options, settings)
        _serve(agent.run, agent_health(agent, health or HealthSettings.from_env(environ)), "carbon agent")


def make_aggregator(environ: Mapping[str, str], telemetry: CarbonTelemetry | None = None) -> CarbonAggregator:
    """The aggregator as the settings ask, its totals into `telemetry` (default: one on the global meter)."""
    pue = float(_setting(environ, CARBON_PUE, str(DEFAULT_PUE)))
    options = ConnectionOptions.from_env(environ, name="moeops-carbon-aggregator")
    telemetry = CarbonTelemetry(carbon_meter()) if telemetry is None else telemetry
    return CarbonAggregator(options, default_static_table(), pue=pue, on_totals=telemetry.record_totals)


def run_aggregator(environ: Mapping[str, str], health: HealthSettings | None = None) -> None:
    aggregator = make_aggregator(environ)
    logger.info("carbon aggregator: stream %s → ledger (PUE %s) → bucket %s", CARBON_STREAM, aggregator.ledger.pue,
                CARBON_BUCKET)  # fmt: skip
    _serve(
        aggregator.run,
        aggregator_health(aggregator, health or HealthSettings.from_env(environ)),
        "carbon aggregator",
        aggregator.ready,
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    values = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description="moeops carbon accounting")
    parser.add_argument("command", choices=("agent", "aggregator"))
    parser.add_argument("--log-level", default="INFO")
    try:
        add_health_arguments(parser, values)
    except ValueError as exc:
        parser.error(str(exc))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # OpenTelemetry (when OTEL_EXPORTER_OTLP_ENDPOINT is set), before the instruments are made on the global meter.
    otel_setup = otel.setup(f"carbon-{args.command}", environ=values)
    try:
        (run_agent if args.command == "agent" else run_aggregator)(values, health_settings(args))
    except NvmlUnavailable as exc:
        print(f"moeops carbon agent: NVML is not available on this machine: {exc}", file=sys.stderr)
        raise SystemExit(EX_UNAVAILABLE) from None
    except (BusConfigError, ValueError) as exc:
        print(f"moeops carbon {args.command}: bad settings: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    finally:
        otel_setup.shutdown()
