"""Many training runs in one torchrun launch (test_parallel_parity.py): every rank trains the runs of a JSON list
one after another, each as `moeops.trainer.worker` trains the run of a launch of its own (same `run`, a fresh
Trainer, its own device mesh over the one process group). A launch costs ~10 s of start-up against ~1 s of
training for these runs. The first run that fails ends the launch, its name last on stderr.

    python -m torch.distributed.run --standalone --nproc-per-node=N parity_launch.py RUNS.json

RUNS.json: [{"name": ..., "config": ..., "checkpoint_dir": ..., "metrics": ..., "max_steps": null or N}, ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from moeops.trainer.distributed import shutdown
from moeops.trainer.worker import run


def main(runs_file: Path) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        for entry in json.loads(runs_file.read_text()):
            if os.environ.get("RANK", "0") == "0":
                print(f"parity launch: {entry['name']}", file=sys.stderr, flush=True)
            args = argparse.Namespace(
                config=Path(entry["config"]),
                checkpoint_dir=Path(entry["checkpoint_dir"]),
                metrics=Path(entry["metrics"]),
                max_steps=entry["max_steps"],
                eval_per_domain=0,
                progress=False,
            )
            code: int = run(args)
            if code != 0:
                return code
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
