"""The cluster side of carbon accounting: energy deltas in, energy and gCO2e per workload and stage out.

Pure: `ledger` (the accounting), `intensity` (grid intensity sources behind one protocol), `intensity_cache`,
`messages` (the wire and KV schemas). Edges: `store` (JetStream stream and KV bucket), `aggregator` (the stream
into the ledger, checkpointed, totals out).
"""
