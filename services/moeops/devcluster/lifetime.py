"""Child processes of the local platform die with the process that started them.

Every component runs in a session of its own (a Ctrl-C meant for the test runner must not hit the cluster under
it mid-teardown), so nothing else would end them if that process is killed before its teardown runs: a killed
test run would leave an API server, a node and its training pods behind. Linux's parent-death signal closes that
gap: SIGTERM to the child when its parent goes, whatever way it goes.
"""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A `preexec_fn`: runs in the child between fork and exec."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
