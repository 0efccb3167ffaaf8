"""One training process (what torchrun starts N of): load the config, train, checkpoint, exit with a code
the Job controller can act on: 0 done, 78 configuration error (fail now), 143 preempted (replace me)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from moeops import telemetry
from moeops.api import env
from moeops.api.v1alpha1.runtime import TrainingRuntimeConfig
from moeops.bus.connection import BusConfigError, ConnectionOptions
from moeops.bus.jobs import JobDescription
from moeops.bus.plan_watch import PlanWatcher
from moeops.bus.progress_putter import ProgressPutter
from moeops.bus.publisher import NatsMetricsSink
from moeops.checkpoint.layout import latest
from moeops.data.synthetic import SyntheticCorpus

from .distributed import World, init_world, shutdown
from .errors import EXIT_PREEMPTED, ConfigError
from .faults import SEQUENCE_DELAY_ENV, sequence_delay_for
from .loop import Trainer, evaluate
from .metrics import BackgroundSink, FanOut, JsonlSink, MetricsSink, NullSink, ProgressSink
from .otel import StepGauges
from .preflight import load_config

log = logging.getLogger("moeops.trainer")


def _sink(
    config: TrainingRuntimeConfig, path: Path | None, world: World, progress_total: int | None, root: Path
) -> MetricsSink:
    """Local sinks (files, progress bar) behind one background thread; NATS, when MOEOPS_NATS_URL is set, through
    non-blocking sinks of their own (they buffer and reconnect by themselves): every rank's step metrics when the
    job wants rebalancing, and rank 0's progress of the job (`.status.progress`) whatever it wants."""
    local: list[MetricsSink] = []
    if path is not None:
        local.append(JsonlSink(path.with_name(f"{path.stem}.rank{world.rank}{path.suffix}")))
    if progress_total and world.is_main:
        local.append(ProgressSink(progress_total, sys.stderr))
    sinks: list[MetricsSink] = [BackgroundSink(FanOut(*local))] if local else []
    if options := _bus_options(config, world, "trainer"):
        try:
            sinks.append(
                NatsMetricsSink(options, namespace=config.namespace, job=config.job_name, world_size=world.world_size)
            )
        except ValueError as exc:
            raise ConfigError(f"metrics bus: {exc}") from exc
    if world.is_main and (options := _connection_options(config, world, "progress")):
        step_tokens = config.training.global_batch_size * config.architecture.seq_len  # every rank's rows
        try:
            putter = ProgressPutter(
                options,
                namespace=config.namespace,
                job=config.job_name,
                total_steps=config.training.steps,
                tokens_per_step=step_tokens,
                newest_checkpoint=lambda: found[0] if (found := latest(root)) else None,
            )
        except ValueError as exc:
            raise ConfigError(f"progress bus: {exc}") from exc
        sinks.append(putter)
    if not sinks:
        return NullSink()
    return sinks[0] if len(sinks) == 1 else FanOut(*sinks)


def _bus_options(config: TrainingRuntimeConfig, world: World, role: str) -> ConnectionOptions | None:
    """NATS settings when MOEOPS_NATS_URL is set and the job wants rebalancing; None otherwise."""
    return _connection_options(config, world, role) if config.rebalance.enabled else None


def _connection_options(config: TrainingRuntimeConfig, world: World, role: str) -> ConnectionOptions | None:
    """NATS settings when MOEOPS_NATS_URL is set; None otherwise."""
    if not os.environ.get(env.NATS_URL):
        return None
    try:
        return ConnectionOptions.from_env(name=f"moeops-{role}-{config.job_name}-{world.rank}")
    except (BusConfigError, ValueError) as exc:
        raise ConfigError(f"metrics bus: {exc}") from exc


def _plan_watcher(config: TrainingRuntimeConfig, world: World) -> PlanWatcher | None:
    """Rank 0 follows the job's rebalance plans (the others get them from rank 0: rebalance.py)."""
    options = _bus_options(config, world, "plans") if world.is_main else None
    if options is None:
        return None
    try:
        return PlanWatcher(options, namespace=config.namespace, job=config.job_name)
    except ValueError as exc:
        raise ConfigError(f"plans bus: {exc}") from exc


def _description(config: TrainingRuntimeConfig, world: World, trainer: Trainer) -> JobDescription:
    """What the rebalancer needs to plan for this job (written by rank 0 to the jobs bucket)."""
    plan, arch, rebalance = config.plan, config.architecture, config.rebalance
    return JobDescription(
        namespace=config.namespace,
        job=config.job_name,
        world_size=world.world_size,
        global_batch=config.training.global_batch_size,
        pipeline=plan.pipeline,
        tensor=plan.tensor,
        expert=plan.expert,
        layers=arch.layers,
        experts=arch.experts,
        params_per_expert=3 * arch.d_model * arch.ffn_hidden,  # SwiGLU: w1, w2, w3
        spare_slots=rebalance.expert_spare_slots,
        micro_batches=trainer.micro,
        stage_layers=list(trainer.stage_layers),
        rebalance_enabled=rebalance.enabled,
        min_gain=rebalance.min_gain,
        interval_steps=rebalance.interval_steps,
        data_interval_steps=rebalance.data_interval_steps,
        described_at_unix_s=time.time(),
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    world = init_world()
    root = Path(args.checkpoint_dir or config.checkpoint.directory)
    total = min(config.training.steps, args.max_steps or config.training.steps)
    sink = _sink(config, args.metrics, world, total if args.progress else None, root)
    if telemetry.active() is not None:  # the last step's figures as OpenTelemetry gauges
        sink = FanOut(sink, StepGauges())
    plans = _plan_watcher(config, world)
    delay = sequence_delay_for(world.rank)
    if delay > 0:
        log.warning("rank %d: %s adds %.3f s per sequence (fault injection)", world.rank, SEQUENCE_DELAY_ENV, delay)
    trainer = Trainer(config, world, sink, root, plans=plans, sequence_delay_s=delay)
    if plans is not None:
        plans.describe(_description(config, world, trainer))
    signal.signal(signal.SIGTERM, lambda *_: setattr(trainer, "preempt_requested", True))
    if world.is_main:
        log.info("training %s from step %d to %d on %d rank(s)", config.job_name, trainer.step,
                 config.training.steps, world.world_size)  # fmt: skip
    try:
        result = trainer.fit(args.max_steps)
    finally:
        sink.close()
        if plans is not None:
            plans.close()
    if result.preempted:
        log.warning("rank %d: preempted at step %d; checkpoint written", world.rank, result.last_step)
        return EXIT_PREEMPTED
    final = latest(root)
    if world.is_main and args.eval_per_domain and final:
        if isinstance(trainer.corpus, SyntheticCorpus):
            accuracy = evaluate(config, trainer.corpus, final[1], world.device, args.eval_per_domain)
            print(json.dumps({"step": result.last_step, "exact_match": accuracy}), flush=True)
        else:
            log.warning("--eval-per-domain: exact-match accuracy needs a synthetic:// corpus; skipped")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moeops-train-worker")
    parser.add_argument("--config", type=Path, required=True, help="TrainingRuntimeConfig JSON")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="overrides checkpoint.directory")
    parser.add_argument("--metrics", type=Path, default=None, help="JSON-lines file per rank (suffix .rankN)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop earlier than training.steps")
    parser.add_argument("--eval-per-domain", type=int, default=0, help="exact-match examples per domain at the end")
    parser.add_argument("--progress", action="store_true", help="a progress bar on rank 0's stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    otel = telemetry.setup("trainer")  # OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT is set
    try:
        code = run(args)
    except ConfigError as exc:
        code = exc.report()
    finally:
        shutdown()
        otel.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
