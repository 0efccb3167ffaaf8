"""The NATS bus between workers, the rebalancer and (later) the carbon accountant.

Pure (no NATS client): `subjects` (every subject, stream and bucket name), `messages` (versioned schemas,
`encode`/`decode`) and `progress` (a job's progress and the meter that measures it). Edges: `connection` (options
from the environment → nats-py), `streams` (JetStream setup, plans KV), `publisher` (`NatsMetricsSink`, the
trainer's non-blocking metrics sink), `progress_putter` (rank 0's progress into its KV bucket).
"""
