"""One task of one stage: `python -m moeops.datafilter <work folder> <stage> [task]`. The task defaults to
JOB_COMPLETION_INDEX, which Kubernetes sets in each pod of an Indexed Job."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .stages import run_stage


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m moeops.datafilter <work folder> <stage> [task]", file=sys.stderr)
        return 2
    task = int(argv[2]) if len(argv) == 3 else int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    run_stage(Path(argv[0]), argv[1], task)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
