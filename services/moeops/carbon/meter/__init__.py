"""What a node measures, and whose it was.

Edges: `nvml_reader` (GPUs and their energy counters), `gpu_processes` (who runs on a GPU), `mig` (MIG instances),
`local_meter` (a local `moeops train` run). Pure: `energy` (counter and power samples → joules), `poll_interval`,
`rapl` (CPU package energy, measured or estimated), `pod_cpu` (CPU energy per pod from cgroup CPU time),
`attribution` (one interval's energy split over containers and node idle).
"""
