"""`python -m moeops.devcluster.node --kubeconfig FILE --state-dir DIR`: run a process node until SIGTERM/Ctrl-C.

Needs root (mount and UTS namespaces, cgroups, the pods' uids), as a kubelet does.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

import kubernetes

from .agent import NodeShape, ProcessNode


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m moeops.devcluster.node", description=__doc__)
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--state-dir", required=True, type=Path, help="volumes, logs and claims of the node's pods")
    parser.add_argument("--name", default="process-node-0")
    parser.add_argument("--cpu", type=int, default=NodeShape.cpu, help="CPUs the node advertises")
    parser.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu the node advertises (none are real)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = kubernetes.config.new_client_from_config(config_file=str(args.kubeconfig))
    node = ProcessNode(client, args.state_dir, args.name, NodeShape(cpu=args.cpu, gpus=args.gpus))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    node.start()
    logging.getLogger(__name__).info("process node %s ready", args.name)
    stop.wait()
    node.stop()


if __name__ == "__main__":
    main()
