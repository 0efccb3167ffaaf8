"""One task through every stage: what a pod of the operator's filter Job runs (`python -m moeops.datafilter.pipeline`).

The operator runs the filter as ONE Indexed Job of N pods (completion index = task) rather than one Job per stage:
the pods exchange the stages' files in a work folder on the data claim and wait for each other between stages
(a stage's task marks itself done with work/done/<stage>.<task>; the next stage starts when every task of this
one has). So the operator follows a single Job, and a stage starts the moment the last one's files exist, not when a
controller notices a Job finished. The price: the N pods must run at once (parallelism = completions = N).

Task 0 also plans the run (the input files and their byte ranges: the operator cannot list the claim) and, once
every task has filtered, writes <output>/report.json and a summary of the counts per level to `summary` (a pod's
termination message: the operator reads the counts from the pod's status, not from the claim).

A pod restarted by the Job (a node lost) finds its own done marks and skips those stages: every stage writes whole
files under names of its own, so redoing one that had not marked itself done is safe.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .config import CONFIG_FILE, SINGLE_TASK_STAGES, STAGES, plan
from .local import clear_previous_run, input_files
from .stages import load_config, run_stage, write_config, write_report

POLL_S = 0.2
SUMMARY_BYTES = 4096
"""Kubernetes keeps at most 4096 bytes of a termination message."""


class StageTimeout(RuntimeError):
    """The other tasks of a stage did not finish in time (a pod that never started, or died): this task gives up."""


def _done(work: Path, stage: str, task: int) -> Path:
    return work / "done" / f"{stage}.{task:05d}"


def _wait_for(paths: list[Path], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(path.exists() for path in paths):
        if time.monotonic() > deadline:
            missing = [path.name for path in paths if not path.exists()]
            raise StageTimeout(f"waited {timeout_s:.0f} s for {what}: missing {', '.join(missing[:5])}")
        time.sleep(POLL_S)


def _plan(source: Path, output: Path, work: Path, tasks: int, reference: Path | None, options: dict[str, Any]) -> None:
    """Task 0: the plan every task reads (once: a restarted task 0 keeps the plan its peers already follow)."""
    if (work / CONFIG_FILE).exists():
        return
    files = input_files(source)
    if reference is not None:
        options["reference"] = [str(f.resolve()) for f in input_files(reference)]
    clear_previous_run(output, work)
    shutil.rmtree(work / "done", ignore_errors=True)
    config = plan([str(f.resolve()) for f in files], [f.stat().st_size for f in files], tasks,
                  str(output.resolve()), **options)  # fmt: skip
    write_config(work, config)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The counts per level of a report, small enough for a termination message."""
    level1 = report["level1"]
    return {
        "documents": report["input"]["documents"],
        "kept": report["kept"],
        "level1": {
            "exact": level1["dedup"]["exact"],
            "near": level1["dedup"]["near"],
            "quality": level1["quality"]["removed"] if level1["quality"] else 0,
        },
        "malformed": report["input"]["malformed_lines"],
        **({"drift": report["drift"]} if report.get("drift") else {}),
        **({"level2": {"rebalance": report["level2"]["removed"]}} if report.get("level2") else {}),
        **({"level3": {"adversarial": report["level3"]["removed"]}} if report.get("level3") else {}),
    }


def run_task(
    source: Path,
    output: Path,
    work: Path,
    task: int,
    tasks: int,
    *,
    reference: Path | None = None,
    summary_path: Path | None = None,
    timeout_s: float = 3600.0,
    **options: Any,
) -> dict[str, Any] | None:
    """Run task `task` of `tasks` through every stage (see the module docstring); task 0 returns the report."""
    if not 0 <= task < tasks:
        raise ValueError(f"task {task} is not one of 0..{tasks - 1}")
    if task == 0:
        _plan(source, output, work, tasks, reference, dict(options))
    _wait_for([work / CONFIG_FILE], "the plan of task 0", timeout_s)
    config = load_config(work)
    if config.tasks != tasks:
        raise ValueError(f"the plan in {work} is for {config.tasks} tasks, this run has {tasks}")
    timings: dict[str, float] = {}
    for stage in STAGES:
        started = time.perf_counter()
        runs_here = stage not in SINGLE_TASK_STAGES or task == 0
        if runs_here and not _done(work, stage, task).exists():
            run_stage(work, stage, task)
            _done(work, stage, task).parent.mkdir(parents=True, exist_ok=True)
            _done(work, stage, task).touch()
        others = [_done(work, stage, t) for t in range(config.stage_tasks(stage))]
        _wait_for(others, f"stage {stage}", timeout_s)
        timings[stage] = round(time.perf_counter() - started, 3)
    if task != 0:
        return None
    report = write_report(work, timings)
    if summary_path is not None:
        text = json.dumps(summary(report), separators=(",", ":"))
        summary_path.write_text(text[:SUMMARY_BYTES])
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m moeops.datafilter.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="a .jsonl file or a folder of them")
    parser.add_argument("output", type=Path, help="where part-*.jsonl and report.json go")
    parser.add_argument("work", type=Path, help="the work folder the tasks share")
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--task", type=int, default=None, help="default: JOB_COMPLETION_INDEX (an Indexed Job's)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--max-perplexity", type=float, default=None)
    parser.add_argument(
        "--adversarial-drop", type=float, default=None, help="level 3: share dropped (needs --reference)"
    )
    parser.add_argument("--domain-weight", action="append", default=[], metavar="WORD=WEIGHT",
                        help="level 2: a domain seeded by WORD and its target weight (repeat per domain)")  # fmt: skip
    parser.add_argument("--summary", type=Path, default=None, help="where task 0 writes the counts (JSON)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the other tasks")
    args = parser.parse_args(argv)
    task = args.task if args.task is not None else int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    options: dict[str, Any] = {"text_field": args.text_field}
    if args.max_perplexity is not None:
        options["max_perplexity"] = args.max_perplexity
    if args.adversarial_drop is not None:
        options["adversarial_drop"] = args.adversarial_drop
    if args.domain_weight:
        pairs = [item.partition("=") for item in args.domain_weight]
        options["domain_weights"] = {word: float(weight) for word, _, weight in pairs}
    try:
        run_task(args.source, args.output, args.work, task, args.tasks, reference=args.reference,
                 summary_path=args.summary, timeout_s=args.timeout, **options)  # fmt: skip
    except (ValueError, StageTimeout) as err:
        print(f"data filter task {task}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
