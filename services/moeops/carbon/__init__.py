"""Carbon accounting: energy per workload, grid carbon intensity, and the ledger that turns one into the other.

The map, top to bottom (an import only runs downwards; import-linter's carbon contracts in pyproject.toml hold it):

    __main__, cli       `python -m moeops.carbon agent|aggregator`: the container entry points
    reporting/          `moeops carbon report NAME`: a workload's totals per stage as a table, JSON and a PNG
    node/               the node agent (DaemonSet): its GPU or CPU-only energy source, the on-disk spool, the
                        stream publisher, and its OpenTelemetry metrics
    meter/              what a node measures and whose it was: NVML (energy counters, processes, MIG), RAPL, pod CPU
                        time, the energy integrator, the poll interval, the attribution to containers, and the meter
                        of a local `moeops train` run
    accounting/         the cluster side: the carbon ledger (energy → gCO2e per workload and stage), grid intensity
                        sources, the wire messages, the JetStream store, and the aggregator that runs the ledger
    podresources/       the kubelet's pod-resources gRPC API (generated) and the device/cgroup parsers

Pure modules (no NVML, NATS, gRPC or clock) sit at the bottom of each subpackage: `meter.energy`, `meter.attribution`,
`meter.rapl`, `meter.pod_cpu`, `meter.poll_interval`, `accounting.ledger`, `accounting.intensity`,
`accounting.messages`, `node.spool`, `reporting.report`. The operator reads only `accounting.store`,
`accounting.messages` and `accounting.intensity` (for the carbon gate and `.status.carbon`).
"""
