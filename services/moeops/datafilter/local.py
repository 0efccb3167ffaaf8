"""`moeops data filter`: the stages run on this machine, N processes per stage, over the same work-folder layout
the operator's Indexed Jobs use. Each task is `python -m moeops.datafilter <work> <stage> <task>`, as in a pod."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import CONFIG_FILE, STAGES, plan
from .stages import load_config, write_config, write_report


def input_files(path: Path) -> list[Path]:
    """A .jsonl file, or every .jsonl below a folder (sorted, hidden ones skipped); ValueError if none."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"input {path} does not exist")
    files = sorted(
        p for p in path.rglob("*.jsonl")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )  # fmt: skip
    if not files:
        raise ValueError(f"input folder {path} holds no .jsonl files")
    return files


def clear_previous_run(output: Path, work: Path) -> None:
    """Remove what an earlier run left in `output` and `work` (shards of more tasks would otherwise stay beside
    the new ones); ValueError if `output` holds anything else: it is not ours to empty."""
    if output.is_dir():
        foreign = [
            p.name for p in output.iterdir()
            if not (p.name in ("report.json", ".work") or (p.name.startswith("part-") and p.suffix == ".jsonl"))
        ]  # fmt: skip
        if foreign:
            raise ValueError(f"output folder {output} holds other files ({', '.join(sorted(foreign)[:3])}, ...)")
        for shard in output.glob("part-*.jsonl"):
            shard.unlink()
    for stage in (*STAGES, CONFIG_FILE):
        path = work / stage
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_tasks(work: Path, stage: str, tasks: int) -> None:
    """Run a stage's tasks as processes at once; RuntimeError naming the tasks that failed."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "moeops.datafilter", str(work), stage, str(task)])
        for task in range(tasks)
    ]
    failed = [task for task, proc in enumerate(procs) if proc.wait() != 0]
    if failed:
        raise RuntimeError(f"stage {stage}: tasks {failed} failed (their errors are above)")


def filter_corpus(
    source: Path,
    output: Path,
    tasks: int,
    work: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
    reference: Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Plan, run the stages, write <output>/report.json; the report. `reference`: a jsonl file or folder of trusted
    text for the quality model; `options`: FilterConfig's other fields."""
    files = input_files(source)
    if reference is not None:
        options["reference"] = [str(f.resolve()) for f in input_files(reference)]
    work = work or output / ".work"
    if any(f.resolve().is_relative_to(output.resolve()) for f in files):
        raise ValueError(f"the output folder {output} holds input files: write the filtered corpus elsewhere")
    clear_previous_run(output, work)
    config = plan([str(f.resolve()) for f in files], [f.stat().st_size for f in files], tasks,
                  str(output.resolve()), **options)  # fmt: skip
    write_config(work, config)
    timings: dict[str, float] = {}
    for stage in STAGES:
        skip = {"reference": not config.quality_filter(), "adversarial": not config.adversarial(),
                "domains": config.domain_weights is None}  # fmt: skip
        if skip.get(stage):
            continue
        started = time.perf_counter()
        run_tasks(work, stage, load_config(work).stage_tasks(stage))
        timings[stage] = round(time.perf_counter() - started, 3)
        progress(f"{stage}: {timings[stage]:.2f} s")
    return write_report(work, timings)
