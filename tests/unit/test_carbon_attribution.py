"""GPU and CPU energy split over containers and node idle (moeops.carbon.meter.attribution): pure, no NVML, no
kubelet."""

from __future__ import annotations

import math
import random

import pytest

from moeops.carbon.accounting.ledger import Stage, WorkloadKind
from moeops.carbon.meter import attribution
from moeops.carbon.meter.attribution import (
    GpuInterval,
    Split,
    exact_split,
    pod_workload,
    sm_weights,
    split_cpu,
    split_gpu,
    split_node,
    unresolved_workload,
)
from moeops.carbon.podresources.devices import CgroupRef, ContainerRef
from moeops.operator import naming

A = ContainerRef("ml", "trainer-0", "worker")
B = ContainerRef("ml", "server-abc", "server")
GPU = "GPU-5fa9c2d4-1b2c-4d3e-8f90-0123456789ab"


def total(split: attribution.Split[ContainerRef]) -> float:
    return math.fsum([split.idle_j, split.unowned_j, *split.consumers_j.values()])


def test_idle_power_goes_to_node_idle_and_the_rest_to_the_only_holder() -> None:
    split = split_gpu(GpuInterval(GPU, energy_j=400.0, dt_s=1.0, idle_power_w=70.0), [A], {101: 90.0}, {101: A})
    assert split.idle_j == 70.0
    assert split.consumers_j == {A: 330.0}
    assert split.unowned_j == 0.0
    assert split.node_j == 70.0


def test_shared_gpu_is_split_by_summed_sm_utilization_per_container() -> None:
    # A has two processes (30 + 30 = 60), B one (20): 3 : 1 of the 200 J above idle.
    sm = {1: 30.0, 2: 30.0, 3: 20.0}
    owner = {1: A, 2: A, 3: B}
    split = split_gpu(GpuInterval(GPU, 300.0, 2.0, 50.0), [A, B], sm, owner)
    assert split.idle_j == 100.0
    assert split.consumers_j[A] == pytest.approx(150.0)
    assert split.consumers_j[B] == pytest.approx(50.0)
    assert not split.equal_split
    assert total(split) == 300.0


def test_assigned_gpu_with_no_reported_sm_activity_is_split_equally() -> None:
    split = split_gpu(GpuInterval(GPU, 180.0, 1.0, 60.0), [A, B], {1: 0.0}, {1: A})
    assert split.equal_split
    assert split.consumers_j == {A: 60.0, B: 60.0}
    assert split.idle_j == 60.0


def test_gpu_assigned_to_nobody_goes_wholly_to_the_node() -> None:
    split: Split[str] = split_gpu(GpuInterval(GPU, 250.0, 1.0, 60.0), [], {}, {})
    assert split.consumers_j == {}
    assert split.idle_j == 60.0
    assert split.unowned_j == 190.0
    assert split.node_j == 250.0


def test_process_in_no_pod_keeps_its_share_unowned() -> None:
    split = split_gpu(GpuInterval(GPU, 200.0, 1.0, 0.0), [A], {1: 75.0, 999: 25.0}, {1: A})
    assert split.consumers_j == {A: 150.0}
    assert split.unowned_j == 50.0


def test_a_process_owner_not_in_the_device_map_is_still_charged() -> None:
    # e.g. a privileged container that sees every GPU: the kubelet assigned it none, NVML sees it computing.
    split = split_gpu(GpuInterval(GPU, 100.0, 1.0, 0.0), [A], {7: 50.0, 8: 50.0}, {7: A, 8: B})
    assert split.consumers_j == {A: 50.0, B: 50.0}


def test_idle_power_above_the_measured_energy_is_capped() -> None:
    split = split_gpu(GpuInterval(GPU, 40.0, 1.0, 70.0), [A], {1: 10.0}, {1: A})
    assert split.idle_j == 40.0
    assert split.consumers_j == {A: 0.0}


def test_invalid_sm_readings_are_dropped() -> None:
    # NVML reports an unknown value as a huge unsigned number; a NaN or a negative must not count either.
    weights = sm_weights([(1, 40.0), (1, 20.0), (2, 4294967295.0), (3, float("nan")), (4, -1.0), (5, 100.0)])
    assert weights == {1: 60.0, 5: 100.0}


def test_bad_intervals_are_refused() -> None:
    with pytest.raises(ValueError, match="energy_j"):
        GpuInterval(GPU, -1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="dt_s"):
        GpuInterval(GPU, 1.0, float("inf"), 0.0)


def test_the_parts_sum_to_the_input_energy_exactly() -> None:
    for seed in range(3000):
        rng = random.Random(seed)
        containers = [ContainerRef("ns", f"pod-{i}", "c") for i in range(rng.randint(0, 6))]
        pids = list(range(rng.randint(0, 10)))
        owner = {pid: rng.choice(containers) for pid in pids if containers and rng.random() < 0.8}
        sm = {pid: rng.choice([0.0, rng.uniform(0, 100), 1e-9]) for pid in pids}
        energy_j = rng.uniform(0, 5000) * rng.choice([1, 1e-7, 1e7])
        interval = GpuInterval(GPU, energy_j, rng.uniform(0.01, 2.0), rng.uniform(0, 400))
        assigned = rng.sample(containers, k=rng.randint(0, len(containers)))
        split = split_gpu(interval, assigned, sm, owner)
        parts = [split.idle_j, split.unowned_j, *split.consumers_j.values()]
        assert math.fsum(parts) == interval.energy_j, f"seed {seed}"
        assert all(value >= 0 for value in parts), f"seed {seed}"


def test_exact_split_needs_the_residue_correction() -> None:
    # Without settling, 1/3 + 1/3 + 1/3 of 0.1 sums to 0.1 only by luck; across many totals it does not.
    misses = 0
    for i in range(1, 1000):
        energy = i * 0.1
        naive = [energy * w / 7.0 for w in (1.0, 2.0, 4.0)]
        misses += math.fsum(naive) != energy
        parts = exact_split(energy, {"a": 1.0, "b": 2.0, "c": 4.0})
        assert math.fsum(parts.values()) == energy
    assert misses > 0  # the test would pass trivially if plain proportions were already exact


def test_node_adds_its_devices_and_mig_devices_by_uuid() -> None:
    mig = "MIG-7d3f1a2b-0c4d-5e6f-8a9b-abcdefabcdef"
    intervals = [
        GpuInterval(GPU, 300.0, 1.0, 100.0),
        GpuInterval(mig, 50.0, 1.0, 0.0),
        GpuInterval("GPU-x", 80.0, 1.0, 80.0),
    ]
    node = split_node(intervals, {GPU: (A,), mig: (B,)}, {GPU: {1: 50.0}}, {1: A})
    assert node.consumers_j == {A: 200.0, B: 50.0}
    assert node.idle_j == 180.0
    assert node.unowned_j == 0.0
    assert set(node.devices) == {GPU, mig, "GPU-x"}


def test_cpu_energy_is_split_by_cpu_time_and_the_rest_of_the_node_is_unowned() -> None:
    split = split_cpu(100.0, 20.0, {A: 3.0, B: 1.0}, node_busy_cpu_s=8.0)
    assert split.idle_j == 20.0
    assert split.consumers_j == {A: 30.0, B: 10.0}
    assert split.unowned_j == 40.0
    assert math.fsum([split.idle_j, split.unowned_j, *split.consumers_j.values()]) == 100.0


def test_cpu_without_any_measured_time_is_all_unowned() -> None:
    split: attribution.Split[ContainerRef] = split_cpu(10.0, 0.0, {}, node_busy_cpu_s=0.0)
    assert split.unowned_j == 10.0


def test_fallback_consumers_are_cgroup_refs() -> None:
    ref = CgroupRef("8a2f9b1c-1234-4f6a-9d2e-0b9c8d7e6f5a", "c" * 64, "containerd")
    split = split_gpu(GpuInterval(GPU, 10.0, 1.0, 0.0), [], {42: 80.0}, {42: ref})
    assert split.consumers_j == {ref: 10.0}
    key = unresolved_workload(ref)
    assert key.namespace == "_unresolved"
    assert key.kind is WorkloadKind.OTHER
    assert key.name == "pod-8a2f9b1c-1234-4f6a-9d2e-0b9c8d7e6f5a"


def test_training_pods_map_to_their_job_and_the_train_stage() -> None:
    labels = {**naming.training_labels("moe-10b"), "moeops.dev/role": "worker"}
    key = pod_workload("ml", "moe-10b-3-xk2p", labels)
    assert (key.namespace, key.kind, key.name, key.stage) == ("ml", WorkloadKind.TRAINING_JOB, "moe-10b", Stage.TRAIN)


def test_serving_pods_map_to_their_service_and_the_inference_stage() -> None:
    key = pod_workload("ml", "chat-7d9c8-abcde", naming.serving_labels("chat"))
    assert (key.kind, key.name, key.stage) == (WorkloadKind.INFERENCE_SERVICE, "chat", Stage.INFERENCE)


def test_other_pods_are_named_by_their_app_label_or_pod_name() -> None:
    key = pod_workload("tools", "nb-0", {"app.kubernetes.io/name": "jupyter"}, other_stage=Stage.DATA)
    assert (key.kind, key.name, key.stage) == (WorkloadKind.OTHER, "jupyter", Stage.DATA)
    assert pod_workload("tools", "nb-0", {}).name == "nb-0"


def test_label_keys_are_the_operators() -> None:
    # attribution may not import the operator (import-linter); this keeps its copies honest.
    assert attribution.TRAINING_JOB_LABEL == naming.TRAINING_JOB_LABEL
    assert attribution.INFERENCE_SERVICE_LABEL == naming.INFERENCE_SERVICE_LABEL
