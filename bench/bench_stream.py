"""zsniff's stream path against real kubectl exec, on the test double or on the real
Kubernetes of tests/realcluster (not a test).

The same bytes for every client: a generated pcap file (>= 1 GB by default; 1514-byte and
mixed-size packets) streamed by ``cat`` through the exec websocket of the test cluster's API
server. Measured clients, each its own process (so its peak RSS is its own):

- ``kubectl``: ``kubectl.1.32 exec POD -- cat FILE > OUT`` (OUT on tmpfs, deleted after);
- ``zsniff pcap``: zsniff's ``ExecSession`` + ``OutputPipeline`` (tcpdump's stream passed
  through) into a ``FileSink`` on tmpfs (deleted after);
- ``zsniff pcapng``: the same pipeline writing pcapng (SHB, IDB, EPBs).

Also: the time of ``kubectl-zsniff --help`` (median of 10) and the time from starting a real
capture (traffic flowing) to its first packet on disk. Timings never fail anything; targets are
reported as met or not: pass-through >= 1.0x kubectl's MB/s, pcapng >= 0.5x, peak RSS < 100 MB.

    sudo python bench/bench_stream.py [--cluster double|real] [--mb 1024] [--repeat 3]
                                      [--state DIR] [--profile]

With ``--cluster real`` the bytes go through kube-apiserver (websocket v5 to the client, SPDY
to kubelet), kubelet and containerd's streaming server, and kubectl is the v1.34 built with
the cluster (the file reaches the pod through a read-only hostPath volume).

Needs root (the test cluster's pods are network namespaces). The generated file is kept in
--data-dir (default /var/tmp/zsniff-bench) and reused by later runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kubectl_zsniff.formats.pcap import encode_pcap_header  # noqa: E402

KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32"
POD = "bench-stream"
CLIENT_POD = "bench-client"
NAMESPACE = "default"
CONTAINER = "main"
CLI = [sys.executable, "-c",
       "import sys; sys.argv[0] = 'kubectl-zsniff'; "
       "from kubectl_zsniff.cli.app import main; main()"]
TARGETS = {"zsniff pcap": 1.0, "zsniff pcapng": 0.5}
RSS_TARGET_MB = 100.0


# ---- the data ------------------------------------------------------------------------------


def make_pcap(path: Path, megabytes: int) -> tuple[int, int]:
    """Write a pcap of about `megabytes` MB (10^6): 60% 1514-byte frames, 20% 66-byte ACKs,
    20% 100-1000 bytes. Returns (bytes, packets); cached beside it in `path`.json."""
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        if info.get("size") == path.stat().st_size:
            return int(info["size"]), int(info["packets"])
    rng = random.Random(42)
    pool = rng.randbytes(4096)
    record = struct.Struct("<IIII")
    target = megabytes * 1_000_000
    written = 24
    packets = 0
    ts_us = 1_700_000_000 * 1_000_000
    tmp = path.with_suffix(".part")
    with open(tmp, "wb", buffering=1 << 22) as f:
        f.write(encode_pcap_header(linktype=1, snaplen=262144))
        while written < target:
            parts = []
            for _ in range(4096):
                roll = rng.random()
                size = 1514 if roll < 0.6 else 66 if roll < 0.8 else rng.randint(100, 1000)
                start = rng.randint(0, 4096 - size)
                ts_us += rng.randint(1, 200)
                parts.append(record.pack(ts_us // 1_000_000, ts_us % 1_000_000, size, size))
                parts.append(pool[start:start + size])
                written += 16 + size
                packets += 1
            f.write(b"".join(parts))
    tmp.rename(path)
    meta.write_text(json.dumps({"size": written, "packets": packets}))
    return written, packets


# ---- measuring a client process ------------------------------------------------------------


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a live process (the API server)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(argv: list[str], env: dict[str, str], server_pid: int,
            stdout: Any = subprocess.DEVNULL) -> dict[str, Any]:
    server_before = cpu_of(server_pid)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read() if proc.stdout is not None else b""
    err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return {"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "server_cpu": cpu_of(server_pid) - server_before,
            "stdout": out, "stderr": err}


# ---- the zsniff client (run as a subprocess of this script) --------------------------------


def client_main(args: argparse.Namespace) -> int:
    from kubectl_zsniff.capture.run import OutputPipeline
    from kubectl_zsniff.kube.client import load_client
    from kubectl_zsniff.kube.pod import PodInfo
    from kubectl_zsniff.options import CaptureLimits, KubeOptions, TcpdumpOptions
    from kubectl_zsniff.sinks.file import FileSink
    from kubectl_zsniff.wire.execws import ExecSession

    kube = load_client(KubeOptions(kubeconfig=args.kubeconfig))
    endpoint = kube.endpoint()
    info = PodInfo(NAMESPACE, args.pod, "node-a", (CONTAINER,), "Running", ())
    out = Path(args.out)
    sink = FileSink(out, args.fmt)
    pipeline = OutputPipeline([sink], info, CONTAINER, kube.context_name, TcpdumpOptions(),
                              CaptureLimits(), None)
    session = ExecSession(endpoint, NAMESPACE, args.pod, CONTAINER, ["cat", args.file])

    async def stream() -> Any:
        await session.connect()
        try:
            return await session.run(pipeline.feed, lambda _data: None)
        finally:
            await session.close()

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    result = asyncio.run(stream())
    sink.close()
    seconds = time.perf_counter() - started
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
        sys.stderr.write(text.getvalue())
    # The parent deletes the output after measuring, as it does kubectl's: freeing 1 GB of
    # tmpfs pages costs ~0.1 s CPU that is no part of the stream path.
    size = out.stat().st_size
    print(json.dumps({"stream_seconds": seconds, "packets": pipeline.packets,
                      "bytes_in": result.bytes_stdout,
                      "bytes_out": size, "exit_code": result.exit_code,
                      "stopped": pipeline.stop_reason.value if pipeline.stop_reason else None}))
    return 0


# ---- the other measurements ----------------------------------------------------------------


def kubectl_fixed_cost(kubectl: str, kubeconfig: Path, env: dict[str, str],
                       runs: int = 5) -> float:
    """Median seconds of `kubectl exec POD -- true`: everything but the stream."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "exec", POD, "-c", CONTAINER,
                        "--", "true"], env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def help_time(env: dict[str, str], runs: int = 10) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([*CLI, "--help"], env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_packet_time(handle: Any, env: dict[str, str], kubeconfig: Path,
                      work: Path) -> float | None:
    """Seconds from launching a capture (traffic flowing) to its first packet in the file."""
    from kubectl_zsniff.formats.pcapng import PacketRecord, read_capture

    out = work / "first.pcapng"
    out.unlink(missing_ok=True)
    target = handle.pod_ip(NAMESPACE, POD, 4)
    traffic = handle.run_in_pod(
        NAMESPACE, CLIENT_POD,
        ["/usr/bin/python3", str(REPO / "tests/e2e/podnet.py"), "traffic", "--to", target,
         "--icmp", "1", "--seconds", "60", "--pause", "0.02"],
        stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        start = time.perf_counter()
        proc = subprocess.Popen([*CLI, POD, "--kubeconfig", str(kubeconfig), "-w", str(out),
                                 "--image", handle.capture_image, "-d", "60s", "-q"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        found = None
        while time.perf_counter() - start < 30 and proc.poll() is None:
            if out.exists() and out.stat().st_size and any(
                    isinstance(e, PacketRecord) for e in read_capture(out)):
                found = time.perf_counter() - start
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        return found
    finally:
        traffic.terminate()
        traffic.wait(10)


# ---- main ----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("_client")
    for name in ("--fmt", "--kubeconfig", "--pod", "--file", "--out"):
        c.add_argument(name, required=True)
    c.add_argument("--profile", action="store_true")
    ap.add_argument("--mb", type=int, default=1000, help="size of the streamed file (MB)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the median counts")
    ap.add_argument("--state", type=Path, default=None,
                    help="use the test cluster of this state dir (default: start a fresh one)")
    ap.add_argument("--data-dir", type=Path, default=Path("/var/tmp/zsniff-bench"))
    ap.add_argument("--out-dir", type=Path, default=Path("/dev/shm"),
                    help="where zsniff's output goes (tmpfs; deleted after each round)")
    ap.add_argument("--kubectl", default=None,
                    help=f"default: {KUBECTL} on the double, the cluster's own on the real one")
    ap.add_argument("--cluster", choices=["double", "real"], default="double")
    ap.add_argument("--profile", action="store_true",
                    help="also run each zsniff client once under cProfile and print the top")
    args = ap.parse_args()
    if args.cmd == "_client":
        return client_main(args)
    if os.geteuid() != 0:
        raise SystemExit("needs root: the test cluster's pods are network namespaces")

    args.data_dir.mkdir(parents=True, exist_ok=True)
    data = args.data_dir / f"stream-{args.mb}MB.pcap"
    t0 = time.perf_counter()
    size, packets = make_pcap(data, args.mb)
    print(f"data: {data} ({size / 1e6:.0f} MB, {packets:,} packets; "
          f"ready in {time.perf_counter() - t0:.1f} s)", flush=True)

    own_state = args.state is None
    state = Path(tempfile.mkdtemp(prefix="zsniff-bench-")) if own_state else args.state
    handle, down = start_cluster(args.cluster, state)
    kubeconfig = handle.kubeconfig
    if args.kubectl is None:
        from tests.realcluster.build import ensure_binaries

        args.kubectl = ensure_binaries()["kubectl"] if args.cluster == "real" else KUBECTL
    print(f"cluster: {args.cluster}; kubectl: {args.kubectl}", flush=True)
    home = Path(tempfile.mkdtemp(prefix="zsniff-bench-home-"))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    try:
        for pod in (POD, CLIENT_POD):
            try:
                handle.get_pod(pod, NAMESPACE)
            except Exception:
                if args.cluster == "real":
                    handle.create_pod(pod, NAMESPACE, host_dirs=(str(args.data_dir),))
                else:
                    handle.create_pod(pod, NAMESPACE)
        server_pid = handle.server_pid
        runs: dict[str, list[dict[str, Any]]] = {"kubectl": [], "zsniff pcap": [],
                                                 "zsniff pcapng": []}
        for round_no in range(args.repeat):
            for name in runs:
                if name == "kubectl":
                    argv = [args.kubectl, "--kubeconfig", str(kubeconfig), "exec", POD, "-c",
                            CONTAINER, "--", "cat", str(data)]
                    # Into a tmpfs file like zsniff's FileSink: both pay for the same writes.
                    out = args.out_dir / f"kubectl-bench-{os.getpid()}.pcap"
                    with open(out, "wb") as sink:
                        m = measure(argv, env, server_pid, stdout=sink)
                    got = out.stat().st_size
                    out.unlink()
                    if got != size:
                        raise SystemExit(f"kubectl: wrote {got} bytes, want {size}")
                    m["stream_seconds"] = m["seconds"]
                    m["packets"] = packets
                else:
                    fmt = name.split()[1]
                    out = args.out_dir / f"zsniff-bench-{os.getpid()}.{fmt}"
                    argv = [sys.executable, __file__, "_client", "--fmt", fmt, "--kubeconfig",
                            str(kubeconfig), "--pod", POD, "--file", str(data), "--out", str(out)]
                    try:
                        m = measure(argv, env, server_pid, stdout=subprocess.PIPE)
                    finally:
                        out.unlink(missing_ok=True)
                    m.update(json.loads(m["stdout"]))
                    if m["packets"] != packets or (fmt == "pcap" and m["bytes_out"] != size):
                        raise SystemExit(f"{name}: wrong output: {m['packets']} packets, "
                                         f"{m['bytes_out']} bytes (want {packets}, {size})")
                runs[name].append(m)
                print(f"round {round_no + 1} {name:14s} {m['seconds']:6.2f} s "
                      f"(stream {m['stream_seconds']:.2f} s) CPU {m['cpu']:5.2f} s "
                      f"RSS {m['rss_mb']:5.1f} MB server CPU {m['server_cpu']:5.2f} s",
                      flush=True)

        print()
        print(f"{size / 1e6:.0f} MB, {packets:,} packets, median of {args.repeat} rounds; "
              "MB/s over the whole process (stream only in brackets)")
        header = (f"{'client':14s} {'MB/s':>16s} {'kpkt/s':>8s} {'CPU s':>6s} {'RSS MB':>7s} "
                  f"{'server CPU s':>12s} {'vs kubectl':>10s}")
        print(header)
        print("-" * len(header))
        base = statistics.median(m["seconds"] for m in runs["kubectl"])
        # kubectl's own stream phase: its whole time less what an exec of `true` costs it
        # (process start, kubeconfig, TLS and exec handshakes, exit). zsniff's stream phase
        # still includes its handshakes: the comparison leans, if anything, kubectl's way.
        fixed = kubectl_fixed_cost(args.kubectl, kubeconfig, env)
        kubectl_stream = base - fixed
        for m in runs["kubectl"]:
            m["stream_seconds"] = m["seconds"] - fixed
        results = {}
        for name, ms in runs.items():
            secs = statistics.median(m["seconds"] for m in ms)
            stream = statistics.median(m["stream_seconds"] for m in ms)
            cpu = statistics.median(m["cpu"] for m in ms)
            rss = max(m["rss_mb"] for m in ms)
            server = statistics.median(m["server_cpu"] for m in ms)
            ratio = base / secs
            results[name] = (ratio, kubectl_stream / stream, rss)
            print(f"{name:14s} {size / 1e6 / secs:7.0f} [{size / 1e6 / stream:6.0f}] "
                  f"{packets / 1e3 / secs:8.0f} {cpu:6.2f} {rss:7.1f} {server:12.2f} "
                  f"{ratio:9.2f}x")
        print()
        for name, want in TARGETS.items():
            ratio, stream_ratio, rss = results[name]
            print(f"target {name} >= {want:.1f}x kubectl, whole process: "
                  f"{'met' if ratio >= want else 'NOT met'} ({ratio:.2f}x); stream phase against "
                  f"kubectl's: {'met' if stream_ratio >= want else 'NOT met'} "
                  f"({stream_ratio:.2f}x)")
        print(f"(kubectl's fixed cost, `kubectl exec POD -- true`: {fixed:.2f} s, median of 5)")
        worst = max(r[2] for n, r in results.items() if n != "kubectl")
        print(f"target peak RSS < {RSS_TARGET_MB:.0f} MB: "
              f"{'met' if worst < RSS_TARGET_MB else 'NOT met'} ({worst:.1f} MB)")

        print()
        print(f"kubectl-zsniff --help: {help_time(env) * 1000:.0f} ms (median of 10)")
        work = Path(tempfile.mkdtemp(prefix="zsniff-bench-first-"))
        for label in ("first capture (injects the container)", "next capture (reuses it)"):
            first = first_packet_time(handle, env, kubeconfig, work)
            text = f"{first:.2f} s" if first is not None else "none within 30 s"
            print(f"first packet on disk, {label}: {text}")

        if args.profile:
            for fmt in ("pcap", "pcapng"):
                out = args.out_dir / f"zsniff-bench-{os.getpid()}.{fmt}"
                print(f"\n== cProfile, zsniff {fmt} (top by own time)", flush=True)
                proc = subprocess.run(
                    [sys.executable, __file__, "_client", "--fmt", fmt, "--kubeconfig",
                     str(kubeconfig), "--pod", POD, "--file", str(data), "--out", str(out),
                     "--profile"], env=env, capture_output=True, text=True, check=True)
                out.unlink(missing_ok=True)
                print(proc.stderr)
    finally:
        if own_state:
            down(state)
    return 0


def start_cluster(kind: str, state: Path) -> tuple[Any, Any]:
    """(handle, down) of a running cluster of that kind in `state`."""
    if kind == "real":
        from tests.realcluster import cluster as real
        from tests.realcluster.handle import RealClusterHandle

        # In a child process: up() builds the images in memory, and a forked child's peak
        # RSS (ru_maxrss) starts from its parent's, which would blur every client's figure.
        subprocess.run([sys.executable, "-m", "tests.realcluster", "up", "--state", str(state)],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        return RealClusterHandle(state), real.down
    from tests.cluster import __main__ as ctl
    from tests.cluster.handle import ClusterHandle

    ctl.up(state)
    return ClusterHandle(state), ctl.down


if __name__ == "__main__":
    sys.exit(main())
