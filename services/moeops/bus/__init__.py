"""The NATS bus between workers, the rebalancer and (later) the carbon accountant.

Pure (no NATS client): `subjects` (every subject, stream and bucket name) and `messages` (versioned schemas,
`encode`/`decode`). Edges: `connection` (options from the environment → nats-py), `streams` (JetStream setup,
plans KV), `publisher` (`NatsMetricsSink`, the trainer's non-blocking metrics sink).
"""
