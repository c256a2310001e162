"""How long `kubectl zsniff --help` takes from a fresh interpreter, against a bare Python start
and real kubectl's own --help in the same run (not a test: timings never fail tests).

    python bench/bench_help.py [--runs 20]

The fastest of N runs counts (the others measure the machine's load, not the program).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZSNIFF_HELP = [sys.executable, "-c", "import sys; sys.argv[0] = 'kubectl-zsniff'; "
               "from kubectl_zsniff.cli.app import main; main()", "--help"]


def fastest(argv: list[str], runs: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                       check=True, cwd=ROOT)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rows = [("python -c pass", [sys.executable, "-c", "pass"]),
            ("kubectl zsniff --help", ZSNIFF_HELP)]
    kubectl = shutil.which("kubectl")
    if kubectl:
        rows.append((f"kubectl --help ({os.path.realpath(kubectl)})", [kubectl, "--help"]))
    results = [(name, fastest(argv, args.runs)) for name, argv in rows]
    zsniff = dict(results)["kubectl zsniff --help"]
    print(f"fastest of {args.runs} runs, load average {os.getloadavg()[0]:.1f}")
    for name, seconds in results:
        print(f"  {name:60s} {seconds * 1000:7.1f} ms   zsniff/this {zsniff / seconds:5.2f}x")


if __name__ == "__main__":
    main()
