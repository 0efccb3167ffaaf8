"""`python -m moeops.devcluster up|controlplane`: the local platform, or its control plane alone, until Ctrl-C.

`up` starts what `make demo` starts (control plane with the CRDs, nats-server, operator, rebalancer, carbon services
and the process node) and prints how to reach it; apply the examples with kubectl and watch them run. The process
node's pods need root (cgroups and mount namespaces): run it as root, as `make demo` does.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from .controlplane import ControlPlane, find_binaries
from .platform import LocalPlatform


def wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moeops.devcluster", description=__doc__)
    parser.add_argument("command", choices=["up", "controlplane"])
    parser.add_argument("--work-dir", type=Path, default=Path(".tmp/devcluster"), help="state and logs")
    parser.add_argument("--no-carbon", action="store_true", help="up: without the carbon aggregator and agent")
    args = parser.parse_args(argv)
    if find_binaries() is None:
        parser.exit(2, "control-plane binaries missing: run hack/bootstrap.sh (or hack/controlplane/build.sh)\n")
    work_dir = args.work_dir.resolve()
    if args.command == "controlplane":
        with ControlPlane(work_dir) as cluster:
            print(f"control plane ready at {cluster.server}\nexport KUBECONFIG={cluster.kubeconfig}", flush=True)
            wait_for_interrupt()
        return
    with LocalPlatform(work_dir, with_carbon=not args.no_carbon) as platform:
        assert platform.nats is not None
        print(f"platform up (logs in {work_dir})\nexport KUBECONFIG={platform.kubeconfig}\n"
              f"NATS: {platform.nats.url}\ntry: kubectl apply -f examples/moe-checkpoints-pvc.yaml "
              "-f examples/moe-debug-trainingjob.yaml; kubectl get mtj -w", flush=True)  # fmt: skip
        wait_for_interrupt()


if __name__ == "__main__":
    main()
