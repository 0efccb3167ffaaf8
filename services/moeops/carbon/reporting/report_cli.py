"""`moeops carbon report NAME`: a workload's energy and emissions per stage, as a table and a PNG.

Registered on the `moeops` command line (`moeops.cli`). Only click is imported up front; the bus client and
matplotlib load when the command runs. Totals come from the aggregator's `moeops-carbon` KV bucket (NATS settings
from MOEOPS_NATS_*, see `moeops.bus.connection`), or from a ledger snapshot file with --from-snapshot.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from moeops.carbon.accounting.messages import WorkloadCarbon

KINDS = ("MoETrainingJob", "InferenceService")
READ_TIMEOUT_S = 10.0


@click.group()
def carbon() -> None:
    """Carbon accounting: energy and emissions of workloads."""


@carbon.command()
@click.argument("name")
@click.option("--namespace", "-n", default="default", show_default=True)
@click.option("--kind", type=click.Choice(KINDS), default=KINDS[0], show_default=True)
@click.option("--png", type=click.Path(path_type=Path), default=None, help="Also write a bar chart per stage here.")
@click.option("--json", "as_json_", is_flag=True, help="Print the figures as JSON instead of a table.")
@click.option(
    "--from-snapshot",
    "snapshot",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Read a ledger snapshot (JSON) instead of the KV bucket: a local run, no NATS.",
)
def report(name: str, namespace: str, kind: str, png: Path | None, as_json_: bool, snapshot: Path | None) -> None:
    """Energy (kWh), GPU and CPU energy, gCO2e, the estimated share, PUE and the energy-weighted mean intensity,
    per stage of workload NAME."""
    from moeops.carbon.accounting.ledger import WorkloadKind
    from moeops.carbon.reporting.report import as_json, from_snapshot, table

    where = f"{kind} {namespace}/{name}"
    if snapshot is not None:
        try:
            workload = from_snapshot(json.loads(snapshot.read_text()), namespace, WorkloadKind(kind), name)
        except ValueError as exc:  # bad JSON, or not a ledger snapshot (pydantic's ValidationError)
            raise click.ClickException(f"{snapshot}: not a ledger snapshot: {exc}") from exc
    else:
        workload = asyncio.run(_from_bucket(namespace, kind, name))
    if workload is None:
        raise click.ClickException(f"no carbon totals for {where}")
    if as_json_:
        click.echo(json.dumps(as_json(workload), indent=2))
    else:
        click.echo(table(workload), nl=False)
    if png is not None:
        from moeops.carbon.reporting.report_plot import write_png

        click.echo(f"wrote {write_png(workload, png)}", err=True)


async def _from_bucket(namespace: str, kind: str, name: str) -> WorkloadCarbon | None:
    import nats.errors
    from nats.js.errors import BucketNotFoundError

    from moeops.bus.connection import BusConfigError, ConnectionOptions, connect
    from moeops.bus.messages import BadMessage
    from moeops.bus.subjects import CARBON_BUCKET
    from moeops.carbon.accounting.store import workload_carbon

    try:
        options = ConnectionOptions.from_env(name="moeops-carbon-report")
    except BusConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        client = await asyncio.wait_for(connect(options), READ_TIMEOUT_S)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise click.ClickException(f"cannot reach NATS at {', '.join(options.servers)}: {exc!r}") from exc
    try:
        kv = await client.jetstream(timeout=READ_TIMEOUT_S).key_value(CARBON_BUCKET)
        return await workload_carbon(kv, namespace, kind, name)
    except BucketNotFoundError:
        return None
    except BadMessage as exc:
        raise click.ClickException(f"the stored totals are unreadable: {exc}") from exc
    finally:
        await client.close()
