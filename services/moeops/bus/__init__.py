"""The NATS bus: every subject, schema and bucket the components share, and the clients that keep NATS off the
training thread. It sits below every service (nothing here imports the trainer, the server, the rebalancer, the
operator or torch), so both ends of a message import one definition.

Pure (no NATS client; import-linter's "bus subjects and schemas are pure" contract):
    subjects            every subject, stream and bucket name, built in one place
    messages            versioned pydantic schemas (WorkerMetrics, RebalancePlan, …), `encode`/`decode` that never crash
    metrics_wire        WorkerMetrics as a fixed little-endian record (the one message every rank sends every step)
    records             what the bus reads from a training step
    jobs, reports       a job's self-description for the rebalancer; the rebalancer's report for the operator
    plan_shares         a plan's data shares as whole sequences per rank (one rounding for both ends)
    expert_start        where every expert sits when a job starts (trainer and rebalancer agree on it)
    plan_acks           rank 0's acknowledgement of a plan: applied, partly, or refused with reasons
    progress            a job's progress as rank 0 measures it
    serving_messages    a model server's load, for the autoscaler
    health              liveness and readiness state of a long-running component
Edges (nats-py):
    connection          options from the environment → a connection (TLS, credentials, reconnects)
    streams, buckets    JetStream streams and KV buckets, set up idempotently; plan_ack_store, serving_load
    loop_thread         an asyncio loop of its own on a background thread (BackgroundLoop), and safe cancellation
    publisher           `NatsMetricsSink`: the trainer's non-blocking metrics publisher
    progress_putter     rank 0's progress into its KV bucket
    plan_watch          the newest plan of a job, read by a background thread; acknowledgements written back
    health_server       /healthz and /readyz over HTTP, with the NATS and JetStream checks
"""
