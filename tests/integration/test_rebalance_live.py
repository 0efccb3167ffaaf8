"""The rebalancing loop live, on CPU with gloo and a real nats-server: workers publish metrics, the rebalancer
plans, rank 0 reads the plan from the KV bucket, and every rank switches at the plan's step.

- A straggler (fault injection: MOEOPS_FAULT_SEQUENCE_DELAY) gets a smaller data share and the step gets faster.
- Moving experts between EP ranks (weights and AdamW moments) leaves the loss exactly as without the move, and
  the checkpoint written after the move holds the same weights as the one written without it.
- Replicating hot experts into spare slots (rebalance.expertSpareSlots) splits their rows over the replicas and
  sums their gradients: the loss follows the run without replication within fp reassociation.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest
import torch
from trainer_runs import TINY, losses, train, train_env, write_config

from moeops.api import env
from moeops.api.v1alpha1.trainingjob import RebalanceSpec
from moeops.bus.buckets import ensure_reports_bucket, latest_report
from moeops.bus.messages import RebalancePlan
from moeops.bus.reports import RebalanceReport
from moeops.bus.streams import ensure_metrics_stream, ensure_plans_bucket, put_plan
from moeops.checkpoint.layout import latest, read_meta
from moeops.checkpoint.weights import load_model_weights
from moeops.devcluster.nats_server import NatsServer
from moeops.model import Transformer
from moeops.trainer.faults import SEQUENCE_DELAY_ENV

pytestmark = pytest.mark.slow  # torchrun workers, a rebalancer process and a nats-server per test

NAMESPACE, JOB = "local", "test"  # what trainer_runs.write_config names the job
APPLIED = re.compile(r"plan epoch (\d+) applied before step (\d+): shares \[([\d, ]+)\]")


async def _store(url: str, plan: RebalancePlan | None = None) -> None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        js = client.jetstream()
        await ensure_metrics_stream(js)
        kv = await ensure_plans_bucket(js)
        if plan is not None:
            await put_plan(kv, plan)
    finally:
        await client.close()


def _step_records(run_dir: Path, rank: int = 0) -> list[dict[str, float]]:
    path = run_dir / f"metrics.rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    found = latest(run_dir / "ckpt")
    assert found is not None
    model = Transformer(TINY)
    load_model_weights(found[1], model)
    return model.state_dict()


EP_STEPS = 8


@pytest.fixture(scope="module")
def ep_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data=2, expert=2, no spare slots, no plan: the run the expert placements are compared with."""
    without = tmp_path_factory.mktemp("ep-baseline")
    result = train(write_config(without, data=2, expert=2, steps=EP_STEPS), 2)
    assert result.returncode == 0, result.stderr[-3000:]
    return without


def _placement_plan(placement: list[list[list[int]]]) -> RebalancePlan:
    """A plan for the 2-rank EP jobs here that moves experts before step 4 and changes nothing else."""
    return RebalancePlan(
        namespace=NAMESPACE,
        job=JOB,
        epoch=0,
        apply_at_step=4,
        data_shares=[0.5, 0.5],
        stage_layers=[(0, 2)],
        expert_placement=placement,
        predicted_gain=0.1,
        created_at_unix_s=time.time(),
    )


def test_an_expert_move_keeps_the_loss_identical(nats_server: NatsServer, tmp_path: Path, ep_baseline: Path) -> None:
    steps, without = EP_STEPS, ep_baseline

    # Layer 0: experts 1 and 3 to rank 0, 0 and 2 to rank 1 (all four move); layer 1: 0 and 1 swap with 2 and 3.
    plan = _placement_plan([[[1], [0], [1], [0]], [[1], [1], [0], [0]]])
    asyncio.run(_store(nats_server.url, plan))
    moved = tmp_path / "moved"
    moved.mkdir()
    result = train(
        write_config(moved, data=2, expert=2, steps=steps), 2, env=train_env(**{env.NATS_URL: nats_server.url})
    )
    assert result.returncode == 0, result.stderr[-3000:]
    applied = APPLIED.search(result.stderr)
    assert applied is not None, result.stderr[-3000:]
    assert int(applied.group(2)) <= steps, "the plan came too late to test anything"

    assert losses(moved) == losses(without)
    after, before = _final_weights(moved), _final_weights(without)
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


# Splitting an expert's rows over its replicas and summing their gradients across ranks reassociates fp32 sums
# (a few ulp per gradient element); AdamW's normalisation lifts that to ~1e-7-1e-6 relative in the loss within
# a few steps. A missed gradient sum, a replica left stale or rows sent twice show up as 1e-3 or worse.
REPLICA_TOLERANCE = 1e-5


def _max_relative(found: dict[int, float], expected: dict[int, float]) -> float:
    return max(abs(found[step] - loss) / abs(loss) for step, loss in expected.items())


def _hottest_two(run_dir: Path) -> list[tuple[int, int]]:
    """Per layer, the two experts with the most tokens over the run."""
    totals = torch.zeros(TINY.layers, TINY.experts)
    for record in _step_records(run_dir):
        totals += torch.tensor(record["tokens_per_expert"], dtype=torch.float32)
    return [(int(top[0]), int(top[1])) for top in totals.topk(2, dim=1).indices]


def test_replicated_hot_experts_keep_the_loss(nats_server: NatsServer, tmp_path: Path, ep_baseline: Path) -> None:
    steps, spare = EP_STEPS, RebalanceSpec(expert_spare_slots=1)  # TINY: 4 experts, 2 + 1 slots per EP rank
    idle = tmp_path / "spare-no-plan"
    idle.mkdir()
    result = train(write_config(idle, data=2, expert=2, steps=steps, rebalance=spare), 2)
    assert result.returncode == 0, result.stderr[-3000:]
    # The initial spare slots already hold replicas (rank 0: 0 1 2, rank 1: 2 3 0): the same math, split.
    print("spare slots, no plan: max relative loss difference", _max_relative(losses(idle), losses(ep_baseline)))
    assert losses(idle) == pytest.approx(losses(ep_baseline), rel=REPLICA_TOLERANCE)

    # 6 slots for 4 experts: the two hottest of each layer on both ranks, the others one on each.
    placement = []
    for first, second in _hottest_two(ep_baseline):
        rest = [e for e in range(TINY.experts) if e not in (first, second)]
        holders = {first: [0, 1], second: [1, 0], rest[0]: [0], rest[1]: [1]}
        placement.append([holders[e] for e in range(TINY.experts)])
    plan = _placement_plan(placement)
    asyncio.run(_store(nats_server.url, plan))
    replicated = tmp_path / "replicated"
    replicated.mkdir()
    config = write_config(replicated, data=2, expert=2, steps=steps, rebalance=spare)
    result = train(config, 2, env=train_env(**{env.NATS_URL: nats_server.url}))
    assert result.returncode == 0, result.stderr[-3000:]
    applied = APPLIED.search(result.stderr)
    assert applied is not None, result.stderr[-3000:]
    assert int(applied.group(2)) <= steps, "the plan came too late to test anything"
    assert "experts moved, some replicated" in result.stderr
    assert "not applied" not in result.stderr, result.stderr[-3000:]

    found, expected = losses(replicated), losses(ep_baseline)
    print("replicated hot experts: max relative loss difference", _max_relative(found, expected))
    assert found == pytest.approx(expected, rel=REPLICA_TOLERANCE)
    after, before = _final_weights(replicated), _final_weights(ep_baseline)  # one replica per expert on disk
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def _rebalancer(url: str, min_samples: int = 4) -> subprocess.Popen[str]:
    """The cluster-wide rebalancer: no job flags, it learns the job from the description rank 0 writes."""
    command = [sys.executable, "-m", "moeops.rebalancer", "--min-samples", str(min_samples)]
    return subprocess.Popen(command, env=train_env(**{env.NATS_URL: url}), stderr=subprocess.PIPE, text=True)


async def _report(url: str) -> RebalanceReport | None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        return await latest_report(await ensure_reports_bucket(client.jetstream()), NAMESPACE, JOB)
    finally:
        await client.close()


def test_a_straggler_gets_less_data_and_the_step_gets_faster(nats_server: NatsServer, tmp_path: Path) -> None:
    steps, global_batch = 60, 32
    asyncio.run(_store(nats_server.url))
    rebalancer = _rebalancer(nats_server.url, min_samples=8)  # past step 8: steps 3.. before the plan to compare
    try:
        # One data plan in this run (data shares every 50 steps, not the default 2): on 4 processes sharing 2
        # cores the step times jitter by tens of percent, and at the default cadence 4 more plans followed in 50
        # steps, each predicting just over the 5% minimum gain from that noise (issue: a noise-aware minimum).
        spec = RebalanceSpec(min_gain=0.05, data_interval_steps=50)
        # One checkpoint, at the end: a save every 2 steps (write_config's default, for the resume tests) puts a
        # background writer beside the steps whose times are compared.
        config = write_config(tmp_path, data=4, steps=steps, global_batch=global_batch, rebalance=spec,
                              checkpoint_interval=steps)  # fmt: skip
        slowed = train_env(**{env.NATS_URL: nats_server.url, SEQUENCE_DELAY_ENV: "3:0.03"})
        result = train(config, 4, env=slowed)
        report = asyncio.run(_report(nats_server.url))
    finally:
        rebalancer.terminate()
        _, rebalancer_log = rebalancer.communicate(timeout=10)
    assert result.returncode == 0, result.stderr[-3000:]
    applied = APPLIED.search(result.stderr)
    assert applied is not None, f"no plan applied.\ntrainer: {result.stderr[-2000:]}\nrebalancer: {rebalancer_log}"
    at_step = int(applied.group(2))
    shares = [int(share) for share in applied.group(3).split(",")]
    assert sum(shares) == global_batch and shares[3] == min(shares) and shares[3] < global_batch // 4

    records = _step_records(tmp_path)
    seconds = {int(r["step"]): float(r["step_seconds"]) for r in records}
    # The dozen steps on either side of the switch (past the warm-up): adjacent windows see the same background
    # load on a shared machine, where windows far apart need not.
    before = [seconds[s] for s in range(max(3, at_step - 12), at_step)]
    after = [seconds[s] for s in range(at_step + 1, min(steps, at_step + 12) + 1)]
    if len(after) < 5 or len(before) < 5:
        pytest.fail(f"the plan applied at step {at_step}: too few steps on one side to measure its effect")
    ratio = statistics.median(after) / statistics.median(before)
    print(f"step time after/before the plan: {ratio:.2f} (shares {shares})")
    # Rank 3 spends 30 ms more per sequence: 240 ms a step on a quarter of the batch, which sets the pace; with
    # its share cut to 2-3 sequences the pace is the others' again. The bound leaves room for 4 processes sharing
    # 2 cores.
    assert ratio < 0.85, f"step time after/before = {ratio:.2f}; shares {shares}"
    assert report is not None and report.plan_epoch == 0 and report.ranks_reporting == 4, report
    assert 0.0 < report.utilization <= 1.0


def test_a_pipeline_re_split_goes_through_a_checkpoint_and_keeps_the_loss(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    steps, arch = 6, TINY.model_copy(update={"layers": 3})
    without = tmp_path / "without"
    without.mkdir()
    result = train(write_config(without, pipeline=2, steps=steps, arch=arch), 2)
    assert result.returncode == 0, result.stderr[-3000:]

    plan = RebalancePlan(
        namespace=NAMESPACE,
        job=JOB,
        epoch=0,
        apply_at_step=3,
        data_shares=[1.0],
        stage_layers=[(0, 1), (1, 3)],  # from the even split [(0, 2), (2, 3)]
        predicted_gain=0.1,
        created_at_unix_s=time.time(),
    )
    asyncio.run(_store(nats_server.url, plan))
    moved = tmp_path / "moved"
    moved.mkdir()
    config = write_config(moved, pipeline=2, steps=steps, arch=arch)
    result = train(config, 2, env=train_env(**{env.NATS_URL: nats_server.url}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stages [(0, 1), (1, 3)]" in result.stderr, result.stderr[-3000:]

    # Not bit-identical: the gradient-norm clip sums squares per stage before the all-reduce, so moving a layer
    # to the other stage reassociates that sum (a few 1e-6 relative); the parity tests allow 1e-4 across layouts.
    assert losses(moved) == pytest.approx(losses(without), rel=1e-4)
    final = latest(moved / "ckpt")
    assert final is not None and read_meta(final[1])["stage_layers"] == [[0, 1], [1, 3]]
