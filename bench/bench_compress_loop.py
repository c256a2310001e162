"""The pod side of --compress on this machine, without a cluster (not a test; timings never
fail anything): the wrapper zsniff runs in the capture container (busybox sh, and busybox's
gzip, dd, cat... first on PATH, as in the capture image), fed by tcpdump reading a paced pcap
of UDP JSON text, and decoded by zsniff's GzipStream.

Two pipe sizes, because a container's pipes are not always 64 KiB: once uid 0 holds more than
fs.pipe-user-pages-soft pages of pipes machine-wide (a busy node, a shared test machine), a
process without CAP_SYS_RESOURCE/CAP_SYS_ADMIN (any container's root) gets pipes of 2 pages.
`small` emulates that for uid 65534: a holder process of that uid keeps enough pipes open to
pass the limit, and the wrapper runs as that uid, so every pipe it makes has 2 pages (checked
and printed). `default` runs as root (64 KiB pipes).

Per case: the paced rate asked, the rate the loop kept (pcap bytes decoded over the time from
the first packet sent to the last one decoded), gzip members and their mean size, the ratio,
CPU seconds of the wrapper and everything it ran (tcpdump included; `plain` is the same
without --compress, for tcpdump's own share), and for the trickle case each packet's delay.

    sudo python bench/bench_compress_loop.py [--mbs 2,8] [--seconds 6] [--against REV]

--against REV also runs the compress script of that git revision (e.g. the loop before a
change) on the same inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kubectl_zsniff.capture.compress import GzipStream  # noqa: E402
from kubectl_zsniff.formats.pcap import encode_pcap_header  # noqa: E402
from kubectl_zsniff.kube.scripts import CAPTURE_SCRIPT, capture_command  # noqa: E402

NOBODY = 65534
F_GETPIPE_SZ = 1032


def json_text(size: int = 1400) -> list[bytes]:
    """Datagram payloads of JSON lines, as the slow-link bench sends (compressible text)."""
    import json

    text = b"".join(json.dumps({"id": i, "user": f"user{i}", "email": f"user{i}@example.com",
                                "active": i % 3 == 0, "score": (i * 7919) % 1000 / 10}).encode()
                    + b"\n" for i in range(20000))
    return [text[at:at + size] for at in range(0, len(text) - size, size)]


def frame(payload: bytes, n: int) -> bytes:
    """An Ethernet/IPv4/UDP frame around `payload` (checksums left 0: nothing checks them)."""
    udp = (40000).to_bytes(2, "big") + (9999).to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
    ip = b"\x45\0" + (20 + len(udp)).to_bytes(2, "big") + (n & 0xFFFF).to_bytes(2, "big") + \
        b"\x40\0\x40\x11\0\0" + bytes([10, 244, 0, 5]) + bytes([10, 244, 0, 6])
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def records(count: int) -> Iterator[bytes]:
    payloads = json_text()
    for n in range(count):
        data = frame(payloads[n % len(payloads)], n)
        now = time.time()
        yield (int(now).to_bytes(4, "little") + int(now % 1 * 1e6).to_bytes(4, "little")
               + len(data).to_bytes(4, "little") * 2 + data)


@contextlib.contextmanager
def small_pipes_for_nobody() -> Iterator[int]:
    """Holds pipes as uid 65534 until that uid is over fs.pipe-user-pages-soft; yields the
    size a new pipe of that uid gets."""
    soft = int(Path("/proc/sys/fs/pipe-user-pages-soft").read_text())
    need = soft // 16 + 8
    holder_code = (
        "import os, resource, sys, time\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({2 * need + 64}, {2 * need + 64}))\n"
        f"os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        f"pipes = [os.pipe() for _ in range({need})]\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", holder_code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        if holder.stdout.readline().strip() != "ready":
            raise SystemExit("the pipe holder did not start")
        probe = subprocess.run(
            [sys.executable, "-c", f"import os, fcntl; os.setgid({NOBODY}); "
             f"os.setuid({NOBODY}); r, w = os.pipe(); print(fcntl.fcntl(r, {F_GETPIPE_SZ}))"],
            capture_output=True, text=True, check=True)
        yield int(probe.stdout)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def as_nobody() -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def image_path(work: Path) -> Path:
    """A folder like the capture image's /bin: busybox's applets as links, and tcpdump."""
    busybox = shutil.which("busybox") or "busybox"
    tools = work / "bin"
    tools.mkdir()
    for applet in subprocess.run([busybox, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split():
        (tools / applet).symlink_to(busybox)
    (tools / "tcpdump").symlink_to(shutil.which("tcpdump") or "tcpdump")
    return tools


def run_case(script: str | None, shell: list[str], rate: float, seconds: float, uid: int | None,
             work: Path, trickle: bool = False) -> dict[str, Any]:
    """One capture of a paced stream through the wrapper (`script`: the compress script, None
    for the plain capture script)."""
    fifo = work / "in.pcap"
    with contextlib.suppress(FileNotFoundError):
        fifo.unlink()
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    tcpdump = ["-r", str(fifo), "-U", "-w", "-"]
    if script is None:
        cmd = shell + capture_command("zsniff-bench", tcpdump)[1:]
    else:
        cmd = shell + ["-c", script, "zsniff", CAPTURE_SCRIPT, "zsniff-bench", *tcpdump]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd="/tmp",
                            env={"PATH": str(work / "bin")},
                            preexec_fn=as_nobody if uid == NOBODY else None)
    assert proc.stdout is not None and proc.stdin is not None
    got = [0]
    decoded_at: list[float] = []
    plain = script is None

    def count(chunk: memoryview) -> None:
        got[0] += len(chunk)
        decoded_at.append(time.monotonic())

    decoder = GzipStream(count)
    out = proc.stdout

    def read() -> None:
        while chunk := os.read(out.fileno(), 1 << 20):
            if plain:
                count(memoryview(chunk))
            else:
                decoder.feed(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    packets = max(1, int(rate * seconds / 1458)) if not trickle else 40
    delays: list[float] = []
    sent_bytes = 24
    with open(fifo, "wb", buffering=0) as writer:
        writer.write(encode_pcap_header(linktype=1, snaplen=262144))
        start = time.monotonic()
        for record in records(packets):
            if trickle:
                writer.write(record)
                sent_bytes += len(record)
                sent = time.monotonic()
                while got[0] < sent_bytes and time.monotonic() - sent < 5:
                    time.sleep(0.0005)
                delays.append(time.monotonic() - sent)
                time.sleep(random.uniform(0.02, 0.2))
                continue
            due = start + sent_bytes / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            writer.write(record)
            sent_bytes += len(record)
        sent_done = time.monotonic()
    reader.join(timeout=120)
    proc.stdin.close()
    code = proc.wait(timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    last = decoded_at[-1] if decoded_at else sent_done
    return {"exit": code, "pcap_mb": got[0] / 1e6, "complete": got[0] == sent_bytes,
            "kept_mbs": got[0] / 1e6 / max(1e-9, last - start), "asked_mbs": rate / 1e6,
            "lag_s": last - sent_done, "members": decoder.members,
            "ratio": decoder.ratio() or 1.0, "cpu_s": cpu,
            "cpu_s_per_mb": cpu / max(1e-9, got[0] / 1e6), "delays": delays}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mbs", default="1,2,4,8", help="paced rates, MB/s of pcap")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--against", default=None, help="also run the compress script of this "
                    "git revision")
    ap.add_argument("--pipes", default="small,default")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (uid 65534's pipes)", file=sys.stderr)
        return 2
    busybox = shutil.which("busybox")
    if not busybox or not shutil.which("tcpdump"):
        print("needs busybox and tcpdump", file=sys.stderr)
        return 2
    from kubectl_zsniff.capture.compress import COMPRESS_SCRIPT

    scripts: list[tuple[str, str | None]] = [("plain", None), ("compress", COMPRESS_SCRIPT)]
    if args.against:
        text = subprocess.run(["git", "-C", str(REPO), "show",
                               f"{args.against}:kubectl_zsniff/capture/compress.py"],
                              capture_output=True, text=True, check=True).stdout
        scope: dict[str, Any] = {}
        exec(compile(text, f"{args.against}:compress.py", "exec"), scope)  # noqa: S102
        scripts.append((f"compress@{args.against}", scope["COMPRESS_SCRIPT"]))
    work = Path(tempfile.mkdtemp(prefix="zsniff-compress-loop-"))
    os.chmod(work, 0o755)
    shell = [str(image_path(work) / "sh")]
    version = subprocess.run([busybox], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"{version}; load {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    try:
        for pipes in args.pipes.split(","):
            with (small_pipes_for_nobody() if pipes == "small"
                  else contextlib.nullcontext(65536)) as size:
                uid = NOBODY if pipes == "small" else None
                print(f"\npipes: {pipes} ({size} bytes each for the wrapper)")
                for name, script in scripts:
                    if script is not None:
                        r = run_case(script, shell, 1e5, 0, uid, work, trickle=True)
                        d = sorted(r["delays"])
                        print(f"  {name:22s} trickle: 40 packets 20-200 ms apart, delay "
                              f"median {statistics.median(d) * 1e3:5.1f} ms, max "
                              f"{d[-1] * 1e3:6.1f} ms, complete {r['complete']}")
                    for mbs in (float(x) for x in args.mbs.split(",")):
                        r = run_case(script, shell, mbs * 1e6, args.seconds, uid, work)
                        print(f"  {name:22s} asked {mbs:4.1f} MB/s kept {r['kept_mbs']:5.2f} "
                              f"MB/s (lag {r['lag_s']:5.2f} s) members {r['members']:5d} "
                              f"({r['pcap_mb'] * 1e3 / max(1, r['members']):6.0f} KB each) "
                              f"ratio {r['ratio']:4.1f}x CPU {r['cpu_s']:5.2f} s "
                              f"({r['cpu_s_per_mb']:.3f} s/MB) complete {r['complete']} "
                              f"exit {r['exit']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
