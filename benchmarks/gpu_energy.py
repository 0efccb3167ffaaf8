"""GPU energy on real hardware: NVML's energy counter against the integral of its power readings, over a short
bf16 load on one GPU (idle, load, idle), polled at 10 Hz.

Both figures come from one poller thread reading the same GPU: the counter (`nvmlDeviceGetTotalEnergyConsumption`)
summed by `energy.CounterAccumulator` (resets and implausible deltas handled as the agent does), and the power
(`nvmlDeviceGetPowerUsage`) integrated by `energy.PowerIntegrator` (trapezoids, as the agent does where there is
no counter). `NvmlReader`, the agent's own reader, opens NVML, finds the GPU and books its energy beside them.
Printed: both energies (J), their relative difference, the mean power, the counter's observed update period (as
far as polls at `--hz` can see it), the reader's figure, and both energies per phase (the ramps show whether the
power reading lags: on recent GPUs it is an average over up to a second).

The load: back-to-back bf16 matmuls (`--size`², synchronised every few) on CUDA device `--gpu`; its NVML device
is found by UUID (CUDA and NVML can number GPUs differently).

    .venv/bin/python benchmarks/gpu_energy.py                       # idle 2 s, load 10 s, idle 2 s, at 10 Hz
    .venv/bin/python benchmarks/gpu_energy.py --load-s 30 --hz 20

Without NVML, a GPU or CUDA torch it says so in one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from moeops.carbon.meter.energy import CounterAccumulator, MeterLimits, PowerIntegrator
from moeops.carbon.meter.nvml_reader import NvmlReader, NvmlUnavailable

EX_NO_GPU = 2
BATCH = 8
"""Matmuls between two synchronisations: the queue stays short, so the load ends when its phase does."""


class NoGpu(Exception):
    """Nothing to measure here: the message says why."""


@dataclass(frozen=True)
class Reading:
    t_s: float
    counter_mj: int
    power_mw: int
    phase: str


def counter_and_power_j(readings: Sequence[Reading]) -> tuple[float, float, int]:
    """The counter's energy and the power integral over the readings; how many counter deltas were rejected."""
    limits = MeterLimits()
    counter, power = CounterAccumulator(limits.max_power_w), PowerIntegrator(limits.max_gap_s)
    parts, rejected = [], 0
    for reading in readings:
        delta_j = counter.add(reading.t_s, reading.counter_mj)
        rejected += delta_j is None
        parts.append(delta_j or 0.0)
        power.add(reading.t_s, reading.power_mw / 1000.0)
    return math.fsum(parts), power.total_j, rejected


def update_periods_s(readings: Sequence[Reading]) -> list[float]:
    """Seconds between the polls at which the counter's value changed."""
    changes = [now.t_s for before, now in itertools.pairwise(readings) if now.counter_mj != before.counter_mj]
    return [b - a for a, b in itertools.pairwise(changes)]


def summary(readings: Sequence[Reading], phases: Sequence[str]) -> list[str]:
    counter_j, power_j, rejected = counter_and_power_j(readings)
    seconds = readings[-1].t_s - readings[0].t_s
    periods = update_periods_s(readings)
    lines = [
        f"readings: {len(readings)} over {seconds:.2f} s ({rejected} counter deltas rejected as implausible)",
        f"energy, counter:        {counter_j:10.1f} J",
        f"energy, power integral: {power_j:10.1f} J",
        f"difference (power - counter) / counter: {100 * (power_j - counter_j) / counter_j:+.2f} %"
        if counter_j > 0
        else "difference: the counter did not move",
        f"mean power (counter): {counter_j / seconds:.1f} W" if seconds > 0 else "mean power: no time elapsed",
        f"counter update period: median {statistics.median(periods):.3f} s, min {min(periods):.3f} s, max "
        f"{max(periods):.3f} s (over {len(periods)} updates; polls cannot see faster than 1/hz)"
        if periods
        else "counter update period: fewer than two updates seen",
    ]
    for phase in phases:  # each phase from the reading before it, so that the phases add up
        indices = [i for i, r in enumerate(readings) if r.phase == phase]
        if indices:
            span = readings[max(indices[0] - 1, 0) : indices[-1] + 1]
            phase_counter_j, phase_power_j, _ = counter_and_power_j(span)
            lines.append(f"  {phase:<12} counter {phase_counter_j:10.1f} J, power integral {phase_power_j:10.1f} J")
    return lines


def open_gpu(cuda_index: int) -> tuple[NvmlReader, Any, Any, str]:
    """NVML (through the agent's reader), torch and the NVML handle of CUDA device `cuda_index`; raises NoGpu."""
    reader = NvmlReader()
    try:
        gpus = reader.open()
    except NvmlUnavailable as error:
        raise NoGpu(f"NVML is not available: {error}") from None
    try:
        import torch
    except ImportError as error:
        raise NoGpu(f"torch is not installed: {error}") from None
    if not gpus or not torch.cuda.is_available() or cuda_index >= torch.cuda.device_count():
        reader.close()
        raise NoGpu(f"NVML sees {len(gpus)} GPU(s), torch sees {torch.cuda.device_count()} CUDA device(s)")
    import pynvml  # initialised by the reader

    uuid = str(getattr(torch.cuda.get_device_properties(cuda_index), "uuid", "")).lower().removeprefix("gpu-")
    info = next((g for g in gpus if g.uuid.lower().removeprefix("gpu-") == uuid), None)
    if info is None:
        print(f"CUDA device {cuda_index}'s UUID not found in NVML: measuring NVML GPU 0", file=sys.stderr)
        info = gpus[0]
    return reader, torch, pynvml.nvmlDeviceGetHandleByIndex(info.index), f"{info.name} ({info.uuid})"


@dataclass
class Poller:
    """Every 1/hz s until `stop`: the counter and the power of `handle` (into `readings`), and the reader's poll."""

    nvml: Any
    handle: object
    reader: NvmlReader
    hz: float
    phase: str = "idle-before"
    stop: threading.Event = field(default_factory=threading.Event)
    readings: list[Reading] = field(default_factory=list)
    error: Exception | None = None

    def __call__(self) -> None:
        next_s = time.monotonic()
        try:
            while not self.stop.is_set():
                counter_mj = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
                power_mw = self.nvml.nvmlDeviceGetPowerUsage(self.handle)
                self.readings.append(Reading(time.monotonic(), int(counter_mj), int(power_mw), self.phase))
                self.reader.poll()
                next_s += 1.0 / self.hz
                self.stop.wait(max(next_s - time.monotonic(), 0.0))
        except Exception as error:  # e.g. no energy counter (GPUs before Volta): reported after the run
            self.error = error


def load(torch: Any, device: Any, seconds: float, size: int) -> float:
    """bf16 matmuls for `seconds`; the TFLOP/s reached."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize(device)
    start = time.monotonic()
    count = 0
    while time.monotonic() - start < seconds:
        for _ in range(BATCH):
            torch.matmul(a, b)
        torch.cuda.synchronize(device)
        count += BATCH
    return 2 * size**3 * count / (time.monotonic() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--idle-s", type=float, default=2.0, help="before and after the load")
    parser.add_argument("--load-s", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=8192, help="matmul side")
    args = parser.parse_args()
    try:
        reader, torch, handle, name = open_gpu(args.gpu)
    except NoGpu as error:
        print(f"benchmarks/gpu_energy.py: no GPU to measure: {error}", file=sys.stderr)
        raise SystemExit(EX_NO_GPU) from None
    import pynvml

    device = torch.device("cuda", args.gpu)
    torch.zeros(1, device=device)  # the CUDA context first: its creation is not the load
    poller = Poller(pynvml, handle, reader, args.hz)
    thread = threading.Thread(target=poller)
    try:
        thread.start()
        time.sleep(args.idle_s)
        poller.phase = "load"
        tflops = load(torch, device, args.load_s, args.size)
        poller.phase = "idle-after"
        time.sleep(args.idle_s)
    finally:
        poller.stop.set()
        thread.join()
        booked = reader.report()
        reader.close()
    if poller.error is not None or len(poller.readings) < 2:
        print(f"benchmarks/gpu_energy.py: the poller failed: {poller.error!r}", file=sys.stderr)
        raise SystemExit(1)
    print(f"{name}, CUDA device {args.gpu}, {args.hz:g} Hz: idle {args.idle_s:g} s, load {args.load_s:g} s "
          f"(bf16 {args.size}² matmuls, {tflops:.0f} TFLOP/s), idle {args.idle_s:g} s")  # fmt: skip
    print("\n".join(summary(poller.readings, ("idle-before", "load", "idle-after"))))
    mine = next((g for g in booked if g.gpu.uuid in name), None)
    if mine is not None:
        print(f"agent's reader (NvmlReader): {mine.energy.energy_j or 0.0:.1f} J ({mine.energy.state.value})")


if __name__ == "__main__":
    main()
