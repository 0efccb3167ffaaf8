"""`moeops`: the command line of the platform (operator, CRDs, local dev cluster)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click


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
def operator_run(namespaces: tuple[str, ...], standalone: bool, liveness: str | None, verbose: bool) -> None:
    """Run the operator until interrupted (in a pod, or against your kubeconfig)."""
    import kopf

    import moeops.operator.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=standalone,
        liveness_endpoint=liveness,
    )


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True), required=True,
              help="The resolved training config (the operator's ConfigMap `config.json`).")  # fmt: skip
@click.option("--nproc", type=int, default=None, help="Local processes (default: from the pod's environment).")
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def train(config: Path, nproc: int | None, worker_args: tuple[str, ...]) -> None:
    """Train: torch's elastic launcher starts the worker processes (extra args go to each worker)."""
    from moeops.trainer.launch import launch

    sys.exit(launch(config, nproc, list(worker_args)))


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
def dev() -> None:
    """Local development helpers."""


@dev.command("cluster")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path(".tmp/devcluster"), show_default=True)
def dev_cluster(work_dir: Path) -> None:
    """Run a local control plane (etcd + kube-apiserver + kube-controller-manager) until interrupted."""
    import signal
    import threading

    from moeops.devcluster import ControlPlane, find_binaries

    if find_binaries() is None:
        raise click.ClickException("control-plane binaries missing: run hack/controlplane/build.sh")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ControlPlane(work_dir.resolve()) as cluster:
        click.echo(f"control plane ready at {cluster.server}\nexport KUBECONFIG={cluster.kubeconfig}", err=False)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
