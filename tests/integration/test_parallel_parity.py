"""Every parallel layout trains the same model as one process: the losses of the first steps match the
single-process run within 1e-4 (relative), on CPU with gloo, at world sizes 2 and 4.

Why 1e-4 and not bit-exact: the layouts sum the same terms in different orders (all-reduces, split
matmuls, micro-batches), and Adam turns ~1e-7 gradient differences into visible but tiny loss differences.
A wrong gradient scale, a missed reduction or a mis-sharded weight shows up as 1e-2 or worse by step 2.
The balancing (aux) loss is off here because it is a per-batch statistic: its value depends on how a batch is
cut; `test_balancing_loss_through_the_pipeline` checks it with the same micro-batches on both sides.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_runs import TINY, losses, train, write_config

from moeops.api.v1alpha1.trainingjob import RebalanceSpec

pytestmark = pytest.mark.slow  # a torchrun launch per layout

ARCH = TINY.model_copy(update={"layers": 4})
STEPS = 4
TOLERANCE = 1e-4

# name: data, tensor, pipeline, expert
LAYOUTS = {
    "DP2": (2, 1, 1, 1),
    "TP2": (1, 2, 1, 1),
    "PP2": (1, 1, 2, 1),
    "EP2": (2, 1, 1, 2),
    "DP4": (4, 1, 1, 1),
    "TP4": (1, 4, 1, 1),
    "PP4": (1, 1, 4, 1),
    "EP4": (4, 1, 1, 4),
    "DP2xEP2": (4, 1, 1, 2),
    "PP2xDP2": (2, 1, 2, 1),
    "TP2xDP2": (2, 2, 1, 1),
    "TP2xEP2": (2, 2, 1, 2),
    "PP2xTP2": (1, 2, 2, 1),
}


def _run(tmp: Path, name: str, data: int, tensor: int, pipeline: int, expert: int, **kw: object) -> dict[int, float]:
    run_dir = tmp / name
    run_dir.mkdir()
    config = write_config(
        run_dir, data=data, tensor=tensor, pipeline=pipeline, expert=expert, steps=STEPS, arch=ARCH, **kw
    )
    result = train(config, data * tensor * pipeline)
    assert result.returncode == 0, result.stderr[-4000:]
    return losses(run_dir)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    found = _run(tmp_path_factory.mktemp("parity"), "single", 1, 1, 1, 1)
    assert sorted(found) == list(range(1, STEPS + 1))
    assert found[STEPS] < found[1]  # it learns
    return found


def _assert_follows(found: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(found) == sorted(expected)
    for step, loss in expected.items():
        assert found[step] == pytest.approx(loss, rel=TOLERANCE), (step, found, expected)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_follows_the_single_process_run(tmp_path: Path, layout: str, single_process: dict[int, float]) -> None:
    _assert_follows(_run(tmp_path, layout, *LAYOUTS[layout]), single_process)


def test_activation_checkpointing_changes_nothing(tmp_path: Path, single_process: dict[int, float]) -> None:
    _assert_follows(_run(tmp_path, "PP2xDP2-ac", 2, 1, 2, 1, activation_checkpointing=True), single_process)


@pytest.mark.parametrize("layout", ["EP4", "TP2xEP2"])
def test_spare_expert_slots_with_replicas_change_nothing(
    tmp_path: Path, layout: str, single_process: dict[int, float]
) -> None:
    """Spare slots start holding replicas of other ranks' experts: rows split over replicas, gradients summed
    over them (with tensor-parallel expert shards too), the norm clip counting each expert once."""
    spare = RebalanceSpec(expert_spare_slots=2)
    _assert_follows(_run(tmp_path, f"{layout}-spare", *LAYOUTS[layout], rebalance=spare), single_process)


def test_balancing_loss_through_the_pipeline(tmp_path: Path) -> None:
    """The aux loss attached inside each stage gives the gradients of the loss computed in one piece."""
    same = {"aux": 0.05, "micro_batch_size": 2}
    _assert_follows(_run(tmp_path, "PP2-aux", 1, 1, 2, 1, **same), _run(tmp_path, "single-aux", 1, 1, 1, 1, **same))


def test_a_checkpoint_resumes_in_another_layout(tmp_path: Path, single_process: dict[int, float]) -> None:
    """Checkpoints are layout-free: 2 steps as PP2×TP2, then the rest as DP2×EP2 from that checkpoint."""
    run_dir = tmp_path / "reshard"
    run_dir.mkdir()
    first = write_config(run_dir, tensor=2, pipeline=2, steps=STEPS, arch=ARCH)
    assert train(first, 4, "--max-steps", "2").returncode == 0
    second = write_config(run_dir, data=4, expert=2, steps=STEPS, arch=ARCH)
    result = train(second, 4)
    assert result.returncode == 0, result.stderr[-4000:]
    _assert_follows(losses(run_dir), single_process)
