"""A long capture with rotation on, under steady traffic and pod churn: does zsniff's memory
stay flat (not a test; issue 12's acceptance: peak RSS at minute 1 and at the last minute
within 10%).

The bench brings up its own cluster, makes a namespace of its own with a web pod and a client
pod, and captures the web pod into a ring (`-C 1M -W 3` by default) for `--minutes`. All the
while the client sends a steady UDP and HTTP stream to the web pod (generators restarted as
they end: none runs longer than 2 minutes), and every `--churn-every` seconds a new pod is made
in the namespace, pings the web pod (so its name is needed in the file being written), and the
oldest such pod is deleted: the name table changes all the time, and deleted pods' addresses
pile up in the name history if nothing bounds it.

Every 10 s it reads VmRSS and VmHWM (the peak) from /proc of the zsniff process; every 0.2 s it
counts the ring's files. At the end: peak RSS at minute 1 and at the last minute and their
ratio, the most files ever on disk against the ring, capinfos on every file left, packets
delivered against kernel drops (zsniff's summary), and the cluster taken down.

    sudo python bench/bench_soak.py [--minutes 20] [--cluster real|double]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_stream import start_cluster  # noqa: E402
from kubectl_zsniff.formats.pcapng import NameRecords, read_capture  # noqa: E402
from tests.e2e.conftest import (  # noqa: E402
    POD_PYTHON,
    PODNET,
    PodPair,
    Zsniff,
    drop_pair,
    load,
    make_pair,
    stop_process,
    wait_capture_live,
)

NAMESPACE = "zsniff-soak"
SAMPLE_EVERY = 10.0
CHURN_KEPT = 2  # churn pods alive at once


def status_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


class Traffic:
    """The steady stream from the client to the web pod, restarted as each generator ends."""

    def __init__(self, pair: PodPair) -> None:
        self.pair = pair
        self.stop = threading.Event()
        self.rounds = 0
        self.failures = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._proc: subprocess.Popen[str] | None = None

    def _run(self) -> None:
        while not self.stop.is_set():
            # ~200 UDP round trips of 1400 bytes and 20 HTTP requests a second: a 1 MB file
            # fills in a few seconds, so the ring turns over hundreds of times.
            self._proc = self.pair.traffic(udp=10, http=1, size=1400, seconds=100, pause=0.05,
                                           families=(4,))
            out, _ = self._proc.communicate()
            match = re.search(r"rounds (\d+) failures (\d+)", out or "")
            if match:
                self.rounds += int(match.group(1))
                self.failures += int(match.group(2))

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self._proc is not None:
            stop_process(self._proc)
        self.thread.join(30)


class Churn:
    """Pods made and deleted in the bench's namespace: each pings the web pod once."""

    def __init__(self, cluster: Any, pair: PodPair, every: float) -> None:
        self.cluster = cluster
        self.pair = pair
        self.every = every
        self.stop = threading.Event()
        self.alive: list[str] = []
        self.made = 0
        self.deleted = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            name = f"churn-{self.made + 1}"
            try:
                self.cluster.create_pod(name, NAMESPACE)
                self.made += 1
                self.alive.append(name)
                ping = self.cluster.run_in_pod(
                    NAMESPACE, name, [POD_PYTHON, PODNET, "traffic", "--icmp", "3",
                                      "--to", self.pair.web_ips[0]],
                    stdout=subprocess.PIPE, text=True)
                ping.communicate(timeout=30)
                while len(self.alive) > CHURN_KEPT:
                    self.cluster.delete_pod(self.alive.pop(0), NAMESPACE)
                    self.deleted += 1
            except Exception as exc:  # noqa: BLE001 (a bench goes on and says what failed)
                self.errors.append(f"{name}: {exc}")

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(120)
        for name in self.alive:
            try:
                self.cluster.delete_pod(name, NAMESPACE)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"{name}: {exc}")


def count_files(folder: Path, stop: threading.Event, most: list[int]) -> None:
    while not stop.wait(0.2):
        most[0] = max(most[0], len(list(folder.glob("soak-*.pcapng"))))


def soak(cluster: Any, zsniff: Zsniff, pair: PodPair, folder: Path, args: argparse.Namespace,
         ) -> int:
    base = folder / "soak.pcapng"
    rotation = ["-C", args.rotate_size, "-W", str(args.ring)]
    proc = zsniff.start([pair.web, "-n", NAMESPACE, "-w", str(base), *rotation],
                        stderr=subprocess.PIPE, text=True)
    traffic = Traffic(pair)
    churn = Churn(cluster, pair, args.churn_every)
    counting = threading.Event()
    most = [0]
    counter = threading.Thread(target=count_files, args=(folder, counting, most), daemon=True)
    samples: list[tuple[float, int, int]] = []
    # stderr read all along: 20 minutes of warnings must never fill the pipe and stall zsniff.
    lines: list[str] = []
    stderr = proc.stderr
    assert stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_capture_live(cluster, NAMESPACE, pair.web, proc=proc)
        start = time.monotonic()
        counter.start()
        traffic.start()
        churn.start()
        end = start + args.minutes * 60
        next_sample = start + SAMPLE_EVERY
        while time.monotonic() < end:
            if proc.poll() is not None:
                reader.join(10)
                raise SystemExit(f"zsniff ended early ({proc.returncode}): {''.join(lines)}")
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
            if time.monotonic() >= next_sample:
                rss, hwm = status_kib(proc.pid)
                at = time.monotonic() - start
                samples.append((at, rss, hwm))
                files = len(list(folder.glob("soak-*.pcapng")))
                print(f"{at:7.0f} s  RSS {rss / 1024:6.1f} MiB  peak {hwm / 1024:6.1f} MiB  "
                      f"files {files}  churn pods made {churn.made}, deleted {churn.deleted}",
                      flush=True)
                next_sample += SAMPLE_EVERY
    finally:
        churn.finish()
        traffic.finish()
        time.sleep(1.0)  # the last echoes reach the file
        stop_process(proc, signal.SIGINT, timeout=60)
        reader.join(30)
        counting.set()
        counter.join(5)
    err = "".join(lines)
    print(err.strip(), flush=True)
    return report(samples, folder, most[0], err, proc.returncode, traffic, churn, args)


def report(samples: list[tuple[float, int, int]], folder: Path, most: int, err: str,
           status: int | None, traffic: Traffic, churn: Churn, args: argparse.Namespace) -> int:
    files = sorted(folder.glob("soak-*.pcapng"))
    valid = 0
    packets_left = 0
    # The name table each file starts with: what the capture carries from file to file.
    tables = [next((len(e.records) for e in read_capture(str(path))
                    if isinstance(e, NameRecords)), 0) for path in files]
    for path in files:
        check = subprocess.run(["capinfos", "-c", str(path)], capture_output=True, text=True,
                               timeout=60)
        if check.returncode == 0:
            valid += 1
        else:
            print(f"capinfos rejects {path.name}: {check.stderr.strip()}")
        packets_left += len(load(path).packets)
    match = re.search(r"([\d,]+) packets? \(", err)
    delivered = int(match.group(1).replace(",", "")) if match else -1
    match = re.search(r"([\d,]+) dropped by the kernel", err)
    dropped = int(match.group(1).replace(",", "")) if match else -1
    match = re.search(r"-(\d+)\.pcapng \(pcapng\)", err)
    last_number = int(match.group(1)) if match else -1
    # The samples nearest to minute 1 and to the end (each at most ~10 s off).
    first_minute = sorted(samples, key=lambda s: abs(s[0] - 60.0))[:1]
    last_minute = samples[-1:]
    print(f"\nsoak of {args.minutes} min on the {args.cluster} cluster, "
          f"-C {args.rotate_size} -W {args.ring}, a pod made and deleted every "
          f"{args.churn_every:g} s:")
    if first_minute and last_minute:
        peak_1 = first_minute[-1][2]
        peak_n = last_minute[-1][2]
        rss_1 = first_minute[-1][1]
        rss_n = last_minute[-1][1]
        ratio = peak_n / peak_1
        print(f"  peak RSS (VmHWM) at {first_minute[-1][0]:.0f} s: {peak_1 / 1024:.1f} MiB; at "
              f"{last_minute[-1][0]:.0f} s: {peak_n / 1024:.1f} MiB; ratio {ratio:.3f} "
              f"({'within' if abs(ratio - 1) <= 0.10 else 'NOT within'} 10%)")
        print(f"  RSS at {first_minute[-1][0]:.0f} s: {rss_1 / 1024:.1f} MiB; at "
              f"{last_minute[-1][0]:.0f} s: {rss_n / 1024:.1f} MiB; lowest/highest sample "
              f"{min(s[1] for s in samples) / 1024:.1f}/{max(s[1] for s in samples) / 1024:.1f}"
              " MiB")
    print(f"  files: at most {most} on disk at once (ring {args.ring}); {len(files)} left, "
          f"{valid} valid by capinfos; last file number {last_number}")
    print(f"  names each file left starts with: {tables} (pods made over the soak: "
          f"{churn.made})")
    print(f"  packets: {delivered:,} delivered, {dropped:,} dropped by the kernel; "
          f"{packets_left:,} in the files left")
    print(f"  traffic: {traffic.rounds:,} rounds, {traffic.failures:,} failed exchanges; churn: "
          f"{churn.made} pods made, {churn.deleted + len(churn.alive)} deleted"
          + (f"; churn errors: {churn.errors[:3]}" if churn.errors else ""))
    print(f"  zsniff exit status {status}")
    ok = status == 130 and most <= args.ring and valid == len(files) > 0
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--cluster", choices=["real", "double"], default="real")
    ap.add_argument("--rotate-size", default="1M")
    ap.add_argument("--ring", type=int, default=3)
    ap.add_argument("--churn-every", type=float, default=10.0, help="seconds between pods")
    args = ap.parse_args()
    if args.minutes < 2:
        ap.error("--minutes must be at least 2 (minute 1 against the last minute)")
    with tempfile.TemporaryDirectory(prefix="zsniff-bench-soak-") as tmp:
        state = Path(tmp) / "cluster"
        handle, down = start_cluster(args.cluster, state)
        try:
            handle.request("POST", "/api/v1/namespaces", {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
            home = Path(tmp) / "home"
            home.mkdir()
            folder = Path(tmp) / "out"
            folder.mkdir()
            zsniff = Zsniff(handle.kubeconfig, home, handle.capture_image)
            pair = make_pair(handle, namespace=NAMESPACE, prefix="soak")
            try:
                return soak(handle, zsniff, pair, folder, args)
            finally:
                drop_pair(pair)
        finally:
            down(state)


if __name__ == "__main__":
    sys.exit(main())
