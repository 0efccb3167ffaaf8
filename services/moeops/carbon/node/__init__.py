"""The node agent (a DaemonSet): energy deltas from this node into the MOEOPS_CARBON stream, losing none.

`agent` runs the loop (poll a source → spool → publish); `node_source` is the GPU source (NVML + kubelet
pod-resources), `cpu_source` the source of a node without a GPU; `spool` (pure) keeps every delta on disk until the
stream has it; `telemetry` and `poll_telemetry` export the agent's readings as OpenTelemetry metrics.
"""
