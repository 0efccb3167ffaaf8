"""Pure pieces of the trainer: the learning-rate schedule and the expert-parallel regrouping."""

from __future__ import annotations

import pytest
import torch

from moeops.trainer.expert_parallel import _expert_major
from moeops.trainer.schedule import lr_at


def test_warmup_then_cosine_to_the_floor() -> None:
    assert lr_at(0, peak=1.0, warmup=4, total=10) == pytest.approx(0.25)
    assert lr_at(3, peak=1.0, warmup=4, total=10) == pytest.approx(1.0)
    assert lr_at(4, peak=1.0, warmup=4, total=10) == pytest.approx(1.0)
    assert lr_at(10, peak=1.0, warmup=4, total=10) == pytest.approx(0.1)
    assert lr_at(7, peak=1.0, warmup=4, total=10) == pytest.approx(0.1 + 0.9 * 0.5)


def test_received_rows_are_regrouped_expert_major() -> None:
    # 2 sources × 2 local experts: source 0 sends 2 rows to expert 0 and 1 to expert 1; source 1 sends 1 and 2.
    recv_PL = torch.tensor([[2, 1], [1, 2]])
    rows = torch.tensor([0, 1, 2, 3, 4, 5])  # arrival order: s0e0 s0e0 s0e1 s1e0 s1e1 s1e1
    assert rows[_expert_major(recv_PL)].tolist() == [0, 1, 3, 2, 4, 5]  # e0: s0, s0, s1; e1: s0, s1, s1


def test_regrouping_handles_empty_blocks() -> None:
    recv_PL = torch.tensor([[0, 3], [2, 0]])
    assert _expert_major(recv_PL).tolist() == [3, 4, 0, 1, 2]


def test_publishing_metrics_never_blocks_and_counts_drops() -> None:
    import threading
    import time

    from moeops.trainer.metrics import BackgroundSink, StepMetrics

    started, release, received = threading.Event(), threading.Event(), []

    class SlowSink:
        def publish(self, record: StepMetrics) -> None:
            started.set()
            release.wait(10)
            received.append(record.step)

        def close(self) -> None:
            """Nothing to release."""

    def record(step: int) -> StepMetrics:
        return StepMetrics(step, 0, 1.0, 0.0, 1, 0.1, 0.1, 0.0, 0.001)

    sink = BackgroundSink(SlowSink(), capacity=4)
    sink.publish(record(0))
    assert started.wait(10)  # the drain thread now holds record 0 inside the slow sink
    began = time.perf_counter()
    for step in range(1, 8):
        sink.publish(record(step))
    assert time.perf_counter() - began < 0.5  # no publish waited for the slow sink
    assert sink.dropped == 3  # 4 fit in the buffer
    release.set()
    sink.close()
    assert received == [0, 1, 2, 3, 4]


def test_progress_lines_every_n_steps_off_a_terminal() -> None:
    import io

    from moeops.trainer.metrics import ProgressSink, StepMetrics

    stream = io.StringIO()
    sink = ProgressSink(total_steps=5, stream=stream, every=2)
    for step in range(1, 6):
        sink.publish(StepMetrics(step, 0, 2.5, 0.0, 100, 0.1, 0.1, 0.0, 0.001))
    sink.close()
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["2/5", "4/5", "5/5"]
    assert "loss 2.500" in lines[-1] and "[" + "=" * ProgressSink.WIDTH + "]" in lines[-1]


def test_a_worker_killed_by_a_signal_gives_its_pod_128_plus_the_signal() -> None:
    """kill -9 (or the OOM killer) must read 137 at the pod, not the 1 its peers exit with when their collectives
    lose it: the operator names the worker that failed first from that (planning/recovery.py)."""
    from moeops.trainer.launch import exit_code_of

    assert exit_code_of(-9) == 137 and exit_code_of(-15) == 143
    assert exit_code_of(3) == 3 and exit_code_of(0) == 1


def test_progress_rate_counts_training_steps_only_and_eta_this_runs_steps_after_a_resume() -> None:
    """A run resumed at step 100 of 200 after 60 s of set-up: 1 s steps of 1,000 tokens and a 3 s checkpoint
    save after step 110 give 1,000 tok/s (not diluted by set-up or the save) and an ETA from this run's 10
    steps and 13 s (1.3 s a step, saves included) for the 90 steps left, not from 110 steps in 13 s."""
    import io

    from moeops.trainer.metrics import ProgressSink, StepMetrics

    now = [60.0]
    stream = io.StringIO()
    sink = ProgressSink(total_steps=200, stream=stream, every=10, clock=lambda: now[0])
    for step in range(101, 111):
        now[0] += 1.0 + (3.0 if step == 110 else 0.0)  # the save before step 110's record arrives
        sink.publish(StepMetrics(step, 0, 2.0, 0.0, 1000, 1.0, 1.0, 0.0, 0.001))
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("step 110/200") and "1,000 tok/s/rank" in line, line
    assert line.endswith("eta 117s"), line  # 90 steps x 1.3 s
