"""`python -m moeops.rebalancer`: the rebalancer service. Without --job it serves every job that
describes itself on the bus (one rebalancer per cluster); with --namespace/--job/--global-batch, that job only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence

from moeops import telemetry
from moeops.bus.connection import ConnectionOptions
from moeops.bus.graceful_stop import run_until_stopped, stop_on_signals
from moeops.bus.health import HealthSettings, add_health_arguments, health_settings
from moeops.bus.health_server import HealthServer, nats_connected, started

from .edge import RebalancerService
from .jobs import JobSettings
from .otel import register
from .policy import Hysteresis


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="moeops rebalancer: worker metrics in, rebalance plans out")
    one = parser.add_argument_group("one job only (default: every job that describes itself on the bus)")
    one.add_argument("--namespace")
    one.add_argument("--job")
    one.add_argument("--global-batch", type=int, help="sequences per step over all ranks")
    one.add_argument("--layers", type=int, default=1, help="model layers (one pipeline stage until re-planned)")
    one.add_argument("--min-gain", type=float, default=0.05)
    one.add_argument("--interval-steps", type=int, default=50)
    one.add_argument("--data-interval-steps", type=int, default=None,
                     help="data-share-only re-plans (default: 2, at most --interval-steps)")  # fmt: skip
    one.add_argument("--disabled", action="store_true", help="consume metrics but never publish a plan")
    one.add_argument("--max-sequences-per-rank", type=int, default=None)
    every = parser.add_argument_group("every job (those that describe themselves take the rest from their spec)")
    every.add_argument("--apply-margin-steps", type=int, default=Hysteresis().apply_margin_steps,
                       help="least steps between the newest reported step and a plan's")  # fmt: skip
    every.add_argument("--min-samples", type=int, default=5, help="steps every rank reports before a plan")
    parser.add_argument("--log-level", default="INFO")
    try:
        add_health_arguments(parser, os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    args = parser.parse_args(argv)
    try:
        health_settings(args)
    except ValueError as exc:
        parser.error(str(exc))
    named = [args.namespace, args.job, args.global_batch]
    if any(value is not None for value in named) and not all(value is not None for value in named):
        parser.error("one job needs all of --namespace, --job and --global-batch")
    return args


def settings_from_args(args: argparse.Namespace) -> list[JobSettings]:
    """The one job the flags name, or none (serve every job that describes itself)."""
    if args.job is None:
        return []
    return [
        JobSettings(
            namespace=args.namespace,
            job=args.job,
            global_batch=args.global_batch,
            hysteresis=Hysteresis(
                args.min_gain, args.interval_steps, args.apply_margin_steps, not args.disabled, args.data_interval_steps
            ),
            stage_layers=((0, args.layers),),
            max_sequences_per_rank=args.max_sequences_per_rank,
            min_samples=args.min_samples,
        )
    ]


def service_health(service: RebalancerService, settings: HealthSettings) -> HealthServer:
    """/readyz: connected to NATS, the consumer in place; /healthz: the main loop goes round."""
    ready = [nats_connected(lambda: service.client), started(service.ready, "metrics consumer")]
    return HealthServer(settings, "rebalancer", [service.heartbeat], ready)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the service until SIGINT/SIGTERM; NATS settings from MOEOPS_NATS_*, health endpoints' from
    MOEOPS_HEALTH_* or the flags."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    otel = telemetry.setup("rebalancer")  # OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT is set
    service = RebalancerService(ConnectionOptions.from_env(name="moeops-rebalancer"), settings_from_args(args),
                                min_samples=args.min_samples, apply_margin_steps=args.apply_margin_steps)  # fmt: skip
    register(telemetry.meter("moeops.rebalancer"), service.counters)
    health = service_health(service, health_settings(args))

    async def serve() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop, "rebalancer")
        async with health:
            await run_until_stopped(service.run, stop, what="rebalancer", ready=service.ready)

    try:
        asyncio.run(serve())
    finally:
        otel.shutdown()


if __name__ == "__main__":
    main()
