"""``python -m tests.realcluster up|down|status|build [--state DIR]``.

``up`` builds what is missing, starts etcd, the control plane, containerd and kubelet in the
node's own namespaces, waits until the node is Ready and the ``default`` service account
exists, and prints the path of DIR/kubeconfig (contexts ``zsniff-real`` and
``zsniff-real-limited``). ``down`` removes every process, cgroup, namespace, mount and file
that ``up`` made, also after a ``kill -9``. Both are harmless when repeated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cluster
from .build import BuildError, ensure_binaries
from .node import NodeRecord


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.realcluster")
    ap.add_argument("command", choices=["up", "down", "status", "build"])
    ap.add_argument("--state", type=Path, default=cluster.DEFAULT_STATE)
    a = ap.parse_args(argv)
    try:
        if a.command == "up":
            print(cluster.up(a.state))
        elif a.command == "down":
            problems = cluster.down(a.state)
            for problem in problems:
                print(f"realcluster: {problem}", file=sys.stderr)
            return 1 if problems else 0
        elif a.command == "build":
            print(ensure_binaries().directory)
        else:
            running = cluster.is_up(a.state.resolve())
            record = NodeRecord.load(a.state.resolve())
            print(json.dumps({"running": running, **(record.__dict__ if record else {})}))
            return 0 if running else 1
    except (cluster.ClusterError, BuildError) as err:
        print(f"realcluster: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
