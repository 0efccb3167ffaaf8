"""`moeops`: the command line of the platform (operator, CRDs, train, serve, export, carbon reports, data filter).

The local platform for development is not here: it works only from a checkout (`python -m moeops.devcluster`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from moeops.api import env
from moeops.carbon.reporting.report_cli import carbon
from moeops.serving.exporting.export_cli import export
from moeops.serving.serve_cli import serve

if TYPE_CHECKING:
    from moeops.carbon.meter.local_meter import LocalRun


@click.group()
def main() -> None:
    """moeops: train and serve Mixture-of-Experts models on Kubernetes."""


@main.group()
def operator() -> None:
    """The Kubernetes operator."""


@operator.command("run")
@click.option("--namespace", "-n", "namespaces", multiple=True, help="Watch only these namespaces (repeatable).")
@click.option("--standalone", is_flag=True, help="No peering with other replicas (single replica only).")
@click.option("--liveness", default=None, help="Serve liveness probes, e.g. http://0.0.0.0:8080/healthz.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.option("--log-format", type=click.Choice(["full", "json", "plain"]), default="full", show_default=True,
              help="json: one object per line, with the Kubernetes object each record is about.")  # fmt: skip
def operator_run(
    namespaces: tuple[str, ...], standalone: bool, liveness: str | None, verbose: bool, log_format: str
) -> None:
    """Run the operator until interrupted (in a pod, or against your kubeconfig)."""
    import kopf

    import moeops.operator.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat[log_format.upper()])
    kopf.run(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=standalone,
        liveness_endpoint=liveness,
    )


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True), default=None,
              help="The resolved training config (the operator's ConfigMap `config.json`).")  # fmt: skip
@click.option("--job", type=click.Path(path_type=Path, exists=True), default=None,
              help="A MoETrainingJob manifest, resolved locally as the operator would for --nproc ranks.")  # fmt: skip
@click.option("--nproc", type=int, default=None, help="Local processes (default: from the pod's environment).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path(".tmp/train"), show_default=True,
              help="With --job: where the resolved config and the checkpoints go.")  # fmt: skip
@click.option("--no-carbon", is_flag=True, help="Do not meter a local run's energy (carbon.json beside the config).")
@click.option("--carbon-region", envvar=env.CARBON_REGION, default=None,
              help="Grid region of this machine, a key of the static intensity table  [default: world]")  # fmt: skip
@click.option("--carbon-pue", type=click.FloatRange(min=1.0), default=None,
              help="Facility PUE  [default: 1.0, a workstation; a data centre's is higher]")  # fmt: skip
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def train(
    config: Path | None,
    job: Path | None,
    nproc: int | None,
    work_dir: Path,
    no_carbon: bool,
    carbon_region: str | None,
    carbon_pue: float | None,
    worker_args: tuple[str, ...],
) -> None:
    """Train: torch's elastic launcher starts the worker processes (extra args go to each worker).

    A local run (--job, or --nproc) meters its energy and writes a carbon ledger snapshot beside the config."""
    from moeops.trainer.launch import is_local, launch

    if (config is None) == (job is None):
        raise click.UsageError("give exactly one of --config and --job")
    if job is not None:
        from moeops.local import local_config

        run_dir = work_dir / job.stem
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            resolved = local_config(job, nproc or 1, run_dir / "checkpoints")
        except ValueError as exc:  # pydantic's ValidationError and InvalidSpec are ValueErrors
            raise click.ClickException(f"{job}: {exc}") from exc
        config = run_dir / "config.json"
        config.write_text(resolved.model_dump_json(by_alias=True, indent=2))
        click.echo(f"resolved {job} for {nproc or 1} local rank(s): {resolved.plan} -> {config}", err=True)
        worker_args = ("--progress", *worker_args)
    assert config is not None
    local = is_local(nproc)  # in a pod, the node agent meters the run
    meter = None if no_carbon or not local else _carbon_meter(config, nproc or 1, carbon_region, carbon_pue)
    try:
        code = launch(config, nproc, list(worker_args))
    finally:
        line = meter.finish() if meter is not None else None
        if line is not None:
            click.echo(line, err=True)
    sys.exit(code)


def _carbon_meter(config: Path, nproc: int, region: str | None, pue: float | None) -> LocalRun | None:
    """The energy meter of a local run (`moeops.carbon.meter.local_meter`); None when the config is unreadable (the
    workers will say why) or its job says `spec.carbon.enabled: false`. An unknown region is a usage error, raised
    before anything starts."""
    from moeops.api.v1alpha1.runtime import TrainingRuntimeConfig
    from moeops.carbon.accounting.intensity import IntensityUnavailableError
    from moeops.carbon.meter.local_meter import (
        DEFAULT_REGION,
        SNAPSHOT_NAME,
        WORKSTATION_PUE,
        start_local_meter,
        train_key,
    )

    try:
        resolved = TrainingRuntimeConfig.model_validate_json(config.read_text())
    except (OSError, ValueError):
        return None
    if not resolved.carbon.enabled:
        click.echo("carbon: spec.carbon.enabled is false: this run's energy is not metered", err=True)
        return None
    key = train_key(resolved.namespace, resolved.job_name)
    snapshot = config.parent / SNAPSHOT_NAME
    try:
        return start_local_meter(key, region or DEFAULT_REGION, pue or WORKSTATION_PUE, nproc, snapshot)
    except IntensityUnavailableError as exc:
        raise click.BadParameter(str(exc), param_hint="--carbon-region") from exc


@main.command()
@click.option("--output-dir", type=click.Path(path_type=Path), default=Path("crds"), show_default=True)
@click.option("--check", is_flag=True, help="Fail if the files differ from what the models generate.")
def crds(output_dir: Path, check: bool) -> None:
    """Generate the CRD YAML from the API models."""
    from moeops.api import crdgen

    if check:
        stale = crdgen.drift(output_dir)
        if stale:
            click.echo(f"out of date with the models: {', '.join(stale)} (run `moeops crds`)", err=True)
            sys.exit(1)
        click.echo("CRDs match the models")
        return
    for path in crdgen.write(output_dir):
        click.echo(f"wrote {path}")


@main.group()
def data() -> None:
    """Training data tools."""


@data.command("filter")
@click.option(
    "--input",
    "source",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="A .jsonl file, or a folder: every .jsonl below it.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where the filtered part-*.jsonl shards and report.json go.",
)
@click.option("--tasks", type=click.IntRange(min=1), default=2, show_default=True, help="Processes per stage.")
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Work folder (default <output>/.work).")
@click.option("--text-field", default="text", show_default=True)
@click.option("--shingle", type=click.IntRange(min=1), default=5, show_default=True, help="Words per shingle.")
@click.option("--bands", type=click.IntRange(min=1), default=14, show_default=True)
@click.option("--rows", type=click.IntRange(min=1), default=8, show_default=True, help="MinHash values per band.")
@click.option(
    "--reference",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Trusted text (a .jsonl file or folder) for the quality model.",
)
@click.option(
    "--max-perplexity",
    type=click.FloatRange(min=1.0, min_open=True),
    default=None,
    help="With --reference: drop documents whose byte n-gram perplexity exceeds this.",
)
def data_filter(
    source: Path, output: Path, tasks: int, work: Path | None, text_field: str, shingle: int, bands: int, rows: int,
    reference: Path | None, max_perplexity: float | None,
) -> None:  # fmt: skip
    """Level 1 of the data filter: drop exact and near duplicates (MinHash-LSH) and, with a reference, documents
    of low quality (perplexity), stage by stage, N processes each."""
    from moeops.datafilter.local import filter_corpus

    if (reference is None) != (max_perplexity is None):
        raise click.UsageError("--reference and --max-perplexity go together")
    try:
        report = filter_corpus(source, output, tasks, work, progress=click.echo, text_field=text_field,
                               shingle=shingle, bands=bands, rows=rows, reference=reference,
                               max_perplexity=max_perplexity)  # fmt: skip
    except (ValueError, RuntimeError) as err:
        raise click.ClickException(str(err)) from err
    level1 = report["level1"]
    quality = f", {level1['quality']['removed']} of low quality" if level1["quality"] else ""
    click.echo(
        f"{report['input']['documents']} documents: kept {report['kept']}, removed {level1['dedup']['exact']} exact"
        f" and {level1['dedup']['near']} near duplicates{quality}; report: {output / 'report.json'}"
    )


main.add_command(carbon)
main.add_command(export)
main.add_command(serve)

if __name__ == "__main__":
    main()
