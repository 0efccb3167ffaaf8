"""EPLB's global policy as `rebalance_sim.py`'s baseline: a clean-room numpy rewrite of DeepSeek's algorithm
(replicate to the spare slots by max load per replica, then balanced packing with equal slots per GPU), every
layer at once."""

from __future__ import annotations

import numpy as np

from rebalance_trace import Floats, Ints


def eplb_place(loads: Floats, ranks: int, spare: int) -> Ints:
    """EPLB's global policy, every layer at once: (layers, experts) loads → (layers, ranks, slots) expert ids.

    Replicate: each spare slot to the expert with the most load per replica. Pack: replicas heaviest first, each
    onto the least-loaded GPU that still has a free slot (two replicas of an expert may share a GPU, as in EPLB).
    """
    layers, experts = loads.shape
    rows = np.arange(layers)
    copies = np.ones((layers, experts))
    for _ in range(spare):
        copies[rows, np.argmax(loads / copies, axis=1)] += 1
    items = experts + spare
    item_expert = np.stack([np.repeat(np.arange(experts), copies[layer].astype(np.int64)) for layer in rows])
    item_load = (loads / copies)[rows[:, None], item_expert]
    order = np.argsort(-item_load, axis=1, kind="stable")
    per_rank = items // ranks
    out = np.zeros((layers, ranks, per_rank), dtype=np.int64)
    rank_load = np.zeros((layers, ranks))
    count = np.zeros((layers, ranks), dtype=np.int64)
    for i in range(items):
        pick = order[:, i]
        rank = np.argmin(np.where(count < per_rank, rank_load, np.inf), axis=1)
        out[rows, rank, count[rows, rank]] = item_expert[rows, pick]
        rank_load[rows, rank] += item_load[rows, pick]
        count[rows, rank] += 1
    return out
