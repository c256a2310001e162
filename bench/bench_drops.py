"""Kernel drops under bursts into a BestEffort pod on a busy node: zsniff's default -B 8192
against tcpdump's own 2 MiB (-B 2048), same traffic, same run, alternating (not a test).

Each capture lasts 8 s while two busy loops keep both cores loaded and three generators in
the client pod send bursts (HTTP, UDP, ICMP) to the web pod, whose cgroup has cpu.shares 2:
tcpdump waits for CPU while packets arrive, and what its ring cannot hold the kernel drops.
Counts are tcpdump's own (the summary's "N dropped by the kernel") and the packets in the file.

    sudo python bench/bench_drops.py [--rounds 3] [--cluster real|double]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_stream import start_cluster  # noqa: E402
from tests.e2e.conftest import (  # noqa: E402
    PodPair,
    Zsniff,
    drop_pair,
    load,
    make_pair,
    stop_process,
    wait_capture_live,
)

BUFFERS = {"zsniff default -B 8192": "8192", "tcpdump's own 2 MiB (-B 2048)": "2048"}
BURST_ROUNDS = 4


def capture(zsniff: Zsniff, pair: PodPair, cluster: Any, out: Path,
            buffer_kib: str) -> tuple[int, int]:
    """(packets in the file, kernel drops) of one 8 s capture of bursts on a busy node."""
    out.unlink(missing_ok=True)
    burners = [subprocess.Popen(["timeout", "30", "sh", "-c", "while :; do :; done"])
               for _ in range(2)]
    try:
        proc = zsniff.start([pair.web, "-w", str(out), "-d", "8s", "-B", buffer_kib])
        wait_capture_live(cluster, pair.namespace, pair.web, proc=proc)
        for _ in range(BURST_ROUNDS):
            generators = [pair.traffic(http=4, udp=4, icmp=3) for _ in range(3)]
            for generator in generators:
                generator.communicate(timeout=60)
            time.sleep(0.3)
        _, err = proc.communicate(timeout=60)
    finally:
        for burner in burners:
            stop_process(burner)
    text = err.decode()
    if proc.returncode != 0:
        raise SystemExit(f"capture failed ({proc.returncode}): {text}")
    match = re.search(r"([\d,]+) dropped by the kernel", text)
    dropped = int(match.group(1).replace(",", "")) if match else 0
    return len(load(out).packets), dropped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cluster", choices=["real", "double"], default="real")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zsniff-bench-drops-") as tmp:
        state = Path(tmp) / "cluster"
        handle, down = start_cluster(args.cluster, state)
        try:
            home = Path(tmp) / "home"
            home.mkdir()
            zsniff = Zsniff(handle.kubeconfig, home, handle.capture_image)
            pair = make_pair(handle, prefix="drops")
            totals = {label: [0, 0] for label in BUFFERS}
            try:
                for round_number in range(args.rounds):
                    order = list(BUFFERS.items())
                    if round_number % 2:
                        order.reverse()  # neither setting always goes first
                    for label, kib in order:
                        packets, dropped = capture(zsniff, pair, handle, Path(tmp) / "b.pcapng",
                                                   kib)
                        totals[label][0] += packets
                        totals[label][1] += dropped
                        print(f"round {round_number + 1}: {label}: {packets:,} packets "
                              f"delivered, {dropped:,} dropped by the kernel", flush=True)
            finally:
                drop_pair(pair)
        finally:
            down(state)
    print(f"\n{args.rounds} rounds on the {args.cluster} cluster:")
    for label, (packets, dropped) in totals.items():
        share = dropped / (packets + dropped) if packets + dropped else 0.0
        print(f"  {label}: {packets:,} delivered, {dropped:,} dropped ({share:.1%} of the "
              "packets seen)")
    (big_packets, big_drops), (small_packets, small_drops) = totals.values()
    print(f"  delivered, 8192 / 2048: {big_packets / max(small_packets, 1):.2f}x; "
          f"dropped, 2048 / 8192: {small_drops / max(big_drops, 1):.1f}x "
          f"({small_drops:,} against {big_drops:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
