"""The rebalancer: worker metrics in, load factors, a plan out (data shares, pipeline stages, expert placement).

Pure planner (no NATS, no torch, no Kubernetes: import-linter's pure-planner contract):
    load                EWMA load factors per rank and per expert, from WorkerMetrics
    ingest              folding delivered metrics into the jobs' aggregators (columnar for runs of records)
    jobs, layout        a served job's settings and parallel layout (which rank is which stage and replica)
    data_shares,        micro-batch shares in proportion to measured speed; shares that know the EP groups
    group_shares
    stages              an exact bottleneck partition of layers over pipeline stages
    experts, placement, EPLB-style replication and packing for every MoE layer at once (numpy), the cost of moving
    packing, relabel    there, and which layers' moves pay; ranks relabelled to keep experts where they are
    policy, replan      hysteresis and the plan every rank applies at the same step; one planning round
    outcomes            the closed loop: each plan judged on the step time it delivered; back-off when a kind misses
Edges: `consumer` (a durable JetStream consumer of the METRICS stream), `edge` (RebalancerService: metrics in, plans
and reports out, acknowledgements read), `otel` (its counters), `cli`/`__main__` (`python -m moeops.rebalancer`).
"""
