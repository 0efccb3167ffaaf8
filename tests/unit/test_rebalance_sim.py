"""The rebalancer simulation (benchmarks/rebalance_sim.py) in a small, quick setting: sane, seeded, and ours
ahead of no rebalancing on a trace with stragglers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from rebalance_eplb import eplb_place
from rebalance_sim import simulate
from rebalance_trace import Config, Layout, Trace, judge

SMALL = Config(gpus=128, layers=4)


def test_utilizations_are_fractions_and_ours_beats_no_rebalancing() -> None:
    result = simulate(SMALL, steps=30, interval=10, seed=0)
    for table in (result.utilization, result.utilization_layer_sync, result.worst_utilization):
        assert set(table) == {"none", "EPLB", "ours", "ours, no gate", "oracle (bound)", "oracle, a step late"}
        assert all(0.0 < value <= 1.0 for value in table.values())
    assert result.utilization["ours"] > result.utilization["none"]
    assert result.utilization["ours"] > result.utilization["EPLB"]  # EPLB ignores the stragglers
    # The oracle sees each step before it runs: nothing that only measures can beat it.
    assert result.utilization["oracle (bound)"] > max(v for k, v in result.utilization.items() if k != "oracle (bound)")
    assert result.imbalance["EPLB"] < result.imbalance["none"]
    assert all(value >= 1.0 for value in result.imbalance.values())
    assert len(result.plan_ms) == 2  # plans after steps 9 and 19 (none after the last step)


def test_the_same_seed_gives_the_same_figures_and_another_seed_others() -> None:
    first = simulate(SMALL, steps=20, interval=10, seed=3)
    again = simulate(SMALL, steps=20, interval=10, seed=3)
    other = simulate(SMALL, steps=20, interval=10, seed=4)
    assert first.utilization == again.utilization
    assert first.imbalance == again.imbalance
    assert first.utilization != other.utilization


def test_a_balanced_cluster_is_fully_utilized() -> None:
    config = Config(gpus=64, layers=2, experts=64, straggler_fraction=0.0, speed_spread=0.0, speed_jitter=0.0)
    trace = Trace(config, seed=0)
    speeds = np.ones(config.gpus)
    uniform = np.full((config.groups, config.layers, config.experts), 1.0 / config.experts)
    slots = np.tile(np.arange(config.experts).reshape(config.ep, 1), (config.layers, 1, 1))
    layout = Layout(np.full(config.gpus, config.seqs_per_gpu, dtype=np.int64), slots)
    judged = judge(config, layout, speeds, uniform, migration_s=0.0)
    assert judged.utilization == pytest.approx(1.0)
    assert judged.utilization_layer_sync == pytest.approx(1.0)
    assert judged.imbalance == pytest.approx(1.0)
    # Moving experts for as long as the step computes doubles the step.
    slowed = judge(config, layout, speeds, uniform, migration_s=judged.compute_seconds.max())
    assert slowed.utilization == pytest.approx(0.5)
    assert trace.step()[1].sum(axis=2) == pytest.approx(1.0)


def test_eplb_fills_every_gpu_and_replicates_the_hottest_expert() -> None:
    loads = np.array([[100.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    slots = eplb_place(loads, ranks=4, spare=4)
    assert slots.shape == (1, 4, 3)
    counts = np.bincount(slots.ravel(), minlength=8)
    assert counts[0] == 5 and all(counts[1:] == 1)


def test_data_shares_planned_every_step_follow_the_stragglers_more_closely() -> None:
    every_ten = simulate(SMALL, steps=30, interval=10, seed=0, oracle=False)
    every_step = simulate(SMALL, steps=30, interval=10, seed=0, shares_interval=1, oracle=False)
    assert every_step.utilization["ours"] > every_ten.utilization["ours"]
    assert every_step.utilization["EPLB"] == every_ten.utilization["EPLB"]  # only ours re-plans its shares


def test_shares_over_the_ep_groups_beat_shares_per_gpu() -> None:
    grouped = simulate(SMALL, steps=30, interval=10, seed=0, oracle=False)
    per_gpu = simulate(SMALL, steps=30, interval=10, seed=0, group_shares=False, oracle=False)
    assert grouped.utilization["ours"] > per_gpu.utilization["ours"]
