"""The rebalancer's pure planner: load factors → data shares, pipeline stages, expert placement → a plan.

No NATS, no torch, no Kubernetes here (an import-linter contract): `load` (EWMA load factors from
`WorkerMetrics`), `data_shares` (micro-batch shares proportional to throughput), `stages` (an exact
bottleneck partition of layers over pipeline stages), `experts` (EPLB-style replication and packing, plus the
cost of migrating to a new placement), `policy` (hysteresis and the `RebalancePlan` every rank applies at
the same step), and `replan` (one planning round: a load snapshot → the next plan, or None). The NATS edge that
feeds and publishes them is `edge` (`RebalancerService`), outside the contract.
"""
