"""The product-driven rebalancer simulation (benchmarks/rebalance_product_sim.py) in a small setting: the
product's own ingest and planning round on simulated measurements beat no rebalancing, and our data shares lift
EPLB's placement."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from rebalance_product_sim import Setting, simulate
from rebalance_trace import Config

SMALL = Config(gpus=128, layers=4)


@pytest.mark.slow  # ~10 s: 60 steps of five rows, each through the product's planning round
def test_the_products_rounds_beat_static_and_our_shares_lift_eplb() -> None:
    result = simulate(SMALL, steps=60, warmup=20, seed=0, tuned=[Setting.parse("expertSpareSlots=1")])
    assert set(result) == {"static", "EPLB (every 50)", "EPLB experts + our data shares (defaults)",
                           "ours, defaults", "ours, expertSpareSlots=1"}  # fmt: skip
    assert all(0.0 < value <= 1.0 for value in result.values())
    assert result["ours, defaults"] > result["static"] + 0.05  # no spare slot: the hottest experts dominate
    assert result["EPLB experts + our data shares (defaults)"] > result["EPLB (every 50)"] + 0.1
    assert result["ours, expertSpareSlots=1"] > result["ours, defaults"]  # a hot expert can be replicated


def test_a_setting_names_what_it_changes() -> None:
    assert Setting().name == "ours, defaults"
    tuned = Setting.parse("dataIntervalSteps=5,expertSpareSlots=1,applyMarginSteps=3")
    assert tuned.spec.data_interval_steps == 5 and tuned.spec.expert_spare_slots == 1
    assert tuned.apply_margin_steps == 3
    assert tuned.name == "ours, dataIntervalSteps=5,expertSpareSlots=1,applyMarginSteps=3"
