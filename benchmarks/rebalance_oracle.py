"""The bound of `rebalance_sim.py`: what any plan of whole sequences and EPLB-style placements could reach.

The oracle sees each step's true GPU speeds and expert popularity *before* the step runs (no forecast, no
measurement delay, no migration cost) and plans that very step: experts placed by EPLB's global policy on the
step's own loads, one spare slot per GPU, and data shares from `plan_group_shares` (whole sequences) with
each GPU's exact expert seconds per sequence of its EP group. What it misses is what no policy can win
back under this trace model: the rounding of shares to whole sequences and the expert imbalance left inside
each EP group (one placement serves all groups). Its utilization is the ceiling a goal can be judged against.
"""

from __future__ import annotations

import numpy as np

from moeops.rebalancer.group_shares import plan_group_shares
from rebalance_trace import Config, Floats, Ints, Layout


class Oracle:
    """A policy with `prepare(speeds, popularity)` called before the step it plans for; see the module docstring.
    With `late=True` it plans each step from the truth of the step before (no forecast, no smoothing, no delay
    beyond one step): what a policy that measures perfectly could reach; the gap to the bound is what the
    step-to-step changes (jitter, stragglers starting) cost any measuring policy."""

    def __init__(self, config: Config, layout: Layout, place: object, *, late: bool = False) -> None:
        self.config, self.layout, self.pending_migration_s = config, layout, 0.0
        self._place = place  # rebalance_sim.eplb_place: (layers, experts) loads, ranks, spare → slots
        self.name = "oracle, a step late" if late else "oracle (bound)"
        self._late = late
        self._previous: tuple[Floats, Floats] | None = None

    def prepare(self, speeds: Floats, popularity: Floats) -> None:
        if self._late:
            (speeds, popularity), self._previous = self._previous or (speeds, popularity), (speeds, popularity)
        c = self.config
        slots: Ints = self._place(popularity.sum(axis=0), c.ep, c.ep)  # type: ignore[operator]
        sequences = self.layout.sequences
        group_sequences = np.repeat(sequences.reshape(c.groups, c.ep).sum(axis=1), c.ep)
        per_sequence = self.expert_seconds(slots, popularity, sequences) / group_sequences / speeds
        plan = plan_group_shares(speeds / c.dense_s, per_sequence, c.ep, c.global_batch, current=sequences)  # type: ignore[arg-type]
        self.layout = Layout(np.array(plan.sequences, dtype=np.int64), slots)

    def expert_seconds(self, slots: Ints, popularity: Floats, sequences: Ints) -> Floats:
        """(G,) each GPU's expert work at speed 1 this step, as the judge computes it."""
        c = self.config
        group_seqs = sequences.reshape(c.groups, c.ep).sum(axis=1).astype(np.float64)
        tokens = popularity * group_seqs[:, None, None]
        copies = np.maximum(Layout(sequences, slots).copies(c.experts)[None], 1)
        per_replica = np.concatenate([tokens, np.zeros((*tokens.shape[:2], 1))], axis=2) / copies
        rank_load = per_replica[:, np.arange(c.layers)[:, None, None], slots].sum(axis=3)  # (groups, layers, ep)
        work: Floats = (rank_load.sum(axis=1) * (c.expert_s / c.layers)).ravel()
        return work

    def observe(self, judged: object) -> None:
        """The oracle needs no measurements."""

    def plan(self, step: int) -> None:
        """It plans in `prepare`, for the step about to run."""
