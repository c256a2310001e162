"""Several pods into one pcapng: the multi-pod path's throughput against mergecap, same run.

Run: python bench/bench_merge.py [--packets 200000] [--pods 2 4] [--rounds 3] [--dir /dev/shm]

Input: one pcap stream per pod as `tcpdump -w -` writes it (microsecond pcap, Ethernet), made
here: TCP frames of 66 bytes (ACKs) and 1,400 bytes (segments), 50k sent per second of capture
time (~75k records, ~65 MB/s over all streams: the real cluster's stream path rate), timestamps
interleaved across the pods. Traffic between two captured pods (east/
west) is in both pods' streams: leaving the sender at t, entering the receiver 30-150 us later,
the same frame (one bridge: same MACs and TTL, so that editcap -D can find the copies too).
Every frame is unique otherwise (IP id and TCP TSval carry a counter).

zsniff is driven as the capture run drives it (capture/run.py, capture/session.py): one
OutputPipeline with a FileSink, one lane per pod, fed with CHUNK-sized pieces of each pod's
stream in the order they would arrive (each piece once its last packet was captured), and
`finish()` at the end. Variants: (a) every packet through one lane (the one-pod fast path;
input: all pods' packets in time order, one stream), (b) one lane per pod, merged through the
reorder window (default 250 ms), (c) (b) with --dedup. Peers on the same files, same run:
`mergecap -w out.pcapng` (a time-ordered merge; with one file, the pcap -> pcapng conversion),
`editcap -D N` on mergecap's output (duplicate removal within N packets), and
`tcpdump -r merged -w /dev/null` for scale.

Outputs are checked, not only timed: every input packet is in zsniff's file on its pod's
interface, in its pod's order (minus the receiving ends' copies with --dedup), frame times never
go back, the copies dropped are exactly the copies generated, and capinfos reads the file (packet
count, strict time order). A separate, untimed round per multi-lane variant measures what the
window holds (tracemalloc peak, packets and bytes held, the largest span of packet time held:
the delay the window adds when packet time runs with the wall clock).

Not a test: timings never fail. The machine may be shared: compare within one run (ratios).
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import io
import pstats
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubectl_zsniff.capture.run import STATS_INTERVAL  # noqa: E402
from kubectl_zsniff.formats.pcap import encode_pcap_header  # noqa: E402
from kubectl_zsniff.formats.pcapng import (  # noqa: E402
    Interface,
    PacketRecord,
    read_capture,
)
from kubectl_zsniff.kube.pod import PodInfo  # noqa: E402
from kubectl_zsniff.options import CaptureLimits, TcpdumpOptions  # noqa: E402
from kubectl_zsniff.pipeline.merge import DEFAULT_WINDOW_NS  # noqa: E402
from kubectl_zsniff.pipeline.output import OutputPipeline  # noqa: E402
from kubectl_zsniff.sinks.file import FileSink  # noqa: E402

EPOCH = 1_700_000_000
ACK_BYTES = 66  # Ethernet 14 + IPv4 20 + TCP 32 (timestamps option)
SEGMENT_BYTES = 1400
_ETH = struct.Struct("!6s6sH")
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHHBBBBII")
_RECORD = struct.Struct("<IIII")


# -- input --------------------------------------------------------------------------------


@dataclass
class Record:
    ts_us: int
    frame: bytes
    copy: bool  # the receiving end's copy of an east/west packet


@dataclass
class Workload:
    pods: int
    streams: list[list[Record]]  # per pod, in capture order
    copies: int
    paths: list[Path] = field(default_factory=list)  # per pod, the pcap file
    single: Path | None = None  # every packet in time order, one pcap (variant a)

    @property
    def packets(self) -> int:
        return sum(len(s) for s in self.streams)

    @property
    def data_bytes(self) -> int:
        return sum(len(r.frame) for s in self.streams for r in s)


def _checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(counter: int, src: int, dst: int, size: int, payload: bytes) -> bytes:
    """A TCP frame from pod (or peer) `src` to `dst`, unique by `counter`."""
    src_ip, dst_ip = bytes((10, 244, 1, src)), bytes((10, 244, 1, dst))
    ip_len = size - 14
    ip = _IP.pack(0x45, 0, ip_len, counter & 0xFFFF, 0x4000, 64, 6, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    flags = 0x10 if size == ACK_BYTES else 0x18
    tcp = _TCP.pack(40000 + src, 8080, counter * 1448 & 0xFFFFFFFF, counter & 0xFFFFFFFF,
                    8 << 4, flags, 502, 0, 0, 1, 1, 8, 10, counter & 0xFFFFFFFF, 7)
    eth = _ETH.pack(b"\x02\x42\x0a\xf4\x01" + bytes((dst,)),
                    b"\x02\x42\x0a\xf4\x01" + bytes((src,)), 0x0800)
    body = size - ACK_BYTES
    start = counter * 61 % (len(payload) - body) if body else 0
    return eth + ip + tcp + payload[start : start + body]


def make_workload(pods: int, total: int, east_west: float, rate: float, seed: int) -> Workload:
    """About `total` records over all pods' streams (copies included)."""
    rng = random.Random(seed)
    payload = rng.randbytes(1 << 16)
    streams: list[list[Record]] = [[] for _ in range(pods)]
    t = float(EPOCH) * 1e6
    counter = copies = made = 0
    while made < total:
        t += rng.expovariate(rate / 1e6)
        counter += 1
        src = rng.randrange(pods)
        size = ACK_BYTES if rng.random() < 0.4 else SEGMENT_BYTES
        ts = int(t)
        if pods > 1 and rng.random() < east_west and made + 2 <= total:
            dst = rng.choice([p for p in range(pods) if p != src])
            frame = _frame(counter, 10 + src, 10 + dst, size, payload)
            streams[src].append(Record(ts, frame, False))
            streams[dst].append(Record(ts + rng.randint(30, 150), frame, True))
            copies += 1
            made += 2
        else:
            peer = 200 + rng.randrange(20)  # outside the captured pods
            there, back = (10 + src, peer) if rng.random() < 0.5 else (peer, 10 + src)
            streams[src].append(Record(ts, _frame(counter, there, back, size, payload), False))
            made += 1
    for stream in streams:
        stream.sort(key=lambda r: r.ts_us)  # stable: tcpdump writes in capture order
    return Workload(pods, streams, copies)


def encode_stream(records: list[Record]) -> tuple[bytes, list[int], list[int]]:
    """tcpdump's `-w -` bytes; each record's offset and timestamp (for the chunks' arrival)."""
    parts = [encode_pcap_header(1, 262144)]
    offsets: list[int] = []
    times: list[int] = []
    offset = len(parts[0])
    for r in records:
        offsets.append(offset)
        times.append(r.ts_us)
        parts.append(_RECORD.pack(r.ts_us // 1_000_000, r.ts_us % 1_000_000, len(r.frame),
                                  len(r.frame)))
        parts.append(r.frame)
        offset += 16 + len(r.frame)
    return b"".join(parts), offsets, times


Chunk = tuple[float, int, bytes]  # (when it arrives, seconds of packet time; lane; bytes)


def arrival_chunks(streams: list[bytes], offsets: list[list[int]], times: list[list[int]],
                   chunk: int, order: str) -> list[Chunk]:
    """The chunks in the order a websocket would hand them over: each once the last packet
    that starts in it was captured ('time'), or one chunk of each lane in turn; each with
    that capture time, the clock of its arrival."""
    pieces: list[tuple[int, int, int, bytes]] = []
    for lane, data in enumerate(streams):
        for n, start in enumerate(range(0, len(data), chunk)):
            last = bisect.bisect_left(offsets[lane], start + chunk) - 1
            when = times[lane][last] if last >= 0 else 0
            key = when if order == "time" else n
            pieces.append((key, lane, n, data[start : start + chunk]))
    pieces.sort(key=lambda p: (p[0], p[2], p[1]))
    out: list[Chunk] = []
    now = 0
    for _, lane, n, data in pieces:
        last = bisect.bisect_left(offsets[lane], n * chunk + chunk) - 1
        now = max(now, times[lane][last] if last >= 0 else 0)
        out.append((now / 1e6, lane, data))
    return out


# -- zsniff ---------------------------------------------------------------------------------


def pod_info(i: int) -> PodInfo:
    return PodInfo("bench", f"pod-{i}", "node-1", ("app",), "Running", (f"10.244.1.{10 + i}",))


@dataclass
class Held:
    """What the reorder window held at its fullest (the instrumented round)."""

    packets: int = 0
    data_bytes: int = 0
    span_ns: int = 0  # newest packet time seen minus the oldest still held
    traced_peak: int = 0  # tracemalloc's peak over the round


@dataclass
class ZsniffResult:
    seconds: float
    cpu: float
    packets_out: int
    output_bytes: int
    dropped: int
    late: int
    forced: int
    notes: list[str]


def run_zsniff(chunks: list[Chunk], lanes: int, out: Path, *, merge: bool,
               dedup: bool, window_ns: int, clock: str = "packet",
               watch: Callable[[OutputPipeline], None] | None = None) -> ZsniffResult:
    if out.exists():
        out.unlink()
    sink = FileSink(out, "pcapng")
    pipeline = OutputPipeline([sink], [pod_info(i) for i in range(lanes)], ["app"] * lanes,
                              "bench", TcpdumpOptions(), CaptureLimits(), None)
    if merge:
        pipeline.merge_in_time_order(window_ns)
    if dedup:
        pipeline.deduplicate()
    now = [chunks[0][0] if chunks else 0.0]
    if pipeline.merger is not None and clock == "packet":
        # Live, a chunk arrives about when its last packet was captured: the window's clock
        # reads that time (the chunk's), so the window holds `window` of traffic whatever
        # the speed this bench feeds at. "wall": the run's own monotonic clock.
        pipeline.merger.clock = lambda: now[0]
    feeds = [lane.feed for lane in pipeline.lanes]
    tick = now[0] + STATS_INTERVAL
    start, cpu = time.perf_counter(), time.process_time()
    for when, lane, data in chunks:
        now[0] = when
        feeds[lane](memoryview(data))
        if when >= tick:
            # The run's stats task flushes what has waited, every STATS_INTERVAL.
            pipeline.flush_due()
            tick = when + STATS_INTERVAL
        if watch is not None:
            watch(pipeline)
    pipeline.finish()
    sink.close()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if pipeline.failure is not None:
        raise SystemExit(f"zsniff failed: {pipeline.failure.message}")
    stats = pipeline.merger.stats if pipeline.merger is not None else None
    return ZsniffResult(seconds, cpu, pipeline.packets, pipeline.output_bytes,
                        pipeline.copies_dropped, stats.late if stats else 0,
                        stats.forced if stats else 0, list(pipeline.notes))


def held_watcher(held: Held) -> Callable[[OutputPipeline], None]:
    def watch(pipeline: OutputPipeline) -> None:
        merger = pipeline.merger
        if merger is None or not len(merger):
            return
        held.packets = max(held.packets, len(merger))
        held.data_bytes = max(held.data_bytes, merger.held_bytes)
        # The heap's head is the oldest packet held (a bench may look inside): a _Held, or
        # a tuple whose first item is the time, should the heap hold tuples one day.
        head = merger._heap[0]
        oldest = head[0] if isinstance(head, tuple) else head.ts_ns
        newest = merger._newest_ns or oldest
        held.span_ns = max(held.span_ns, newest - oldest)

    return watch


# -- checks ---------------------------------------------------------------------------------


def check_output(out: Path, work: Workload, dedup: bool, single: bool) -> list[str]:
    """What is wrong with zsniff's file (empty: nothing)."""
    problems: list[str] = []
    names: dict[int, str] = {}
    got: dict[int, list[tuple[int, bytes]]] = {}
    last = backsteps = 0
    for event in read_capture(out):
        if isinstance(event, Interface):
            names[event.id] = event.name or ""
            got[event.id] = []
        elif isinstance(event, PacketRecord):
            got[event.interface_id].append((event.ts_ns, event.data))
            if event.ts_ns < last:
                backsteps += 1
            last = max(last, event.ts_ns)
    if backsteps:
        problems.append(f"frame times went back {backsteps} times")
    if single:
        expected = {0: sorted((r for s in work.streams for r in s), key=lambda r: r.ts_us)}
        expected_names = {0: pod_info(0).title}
    else:
        expected = {i: s for i, s in enumerate(work.streams)}
        expected_names = {i: pod_info(i).title for i in range(work.pods)}
    if sorted(names.values()) != sorted(expected_names.values()):
        problems.append(f"interfaces {names} (expected {expected_names})")
    by_name = {name: got[i] for i, name in names.items()}  # ids go as the lanes start
    for i, records in expected.items():
        want = [(r.ts_us * 1000, r.frame) for r in records if not (dedup and r.copy)]
        have = by_name.get(expected_names[i], [])
        if have != want:
            problems.append(f"interface {i}: {len(have)} packets, expected {len(want)}"
                            + (" (same count, other packets or order)"
                               if len(have) == len(want) else ""))
    total = sum(len(v) for v in got.values())
    wanted = work.packets - (work.copies if dedup else 0)
    if total != wanted:
        problems.append(f"{total} packets in the file, expected {wanted}")
    info = capinfos(out)
    if info.get("Number of packets") != str(wanted):
        problems.append(f"capinfos: {info.get('Number of packets')} packets")
    if info.get("Strict time order") != "True":
        problems.append(f"capinfos: strict time order {info.get('Strict time order')}")
    return problems


def capinfos(path: Path) -> dict[str, str]:
    proc = subprocess.run(["capinfos", "-M", "-c", "-o", str(path)], capture_output=True,
                          text=True, check=False)
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def dedup_window_packets(work: Workload) -> int:
    """How many packets apart (in merged order) a copy can be from its original: editcap -D
    needs at least that window to find every copy."""
    merged = sorted(((r.ts_us, r.copy, r.frame) for s in work.streams for r in s),
                    key=lambda x: x[0])
    first: dict[bytes, int] = {}
    widest = 1
    for i, (_, copy, frame) in enumerate(merged):
        if copy and frame in first:
            widest = max(widest, i - first[frame])
        elif not copy:
            first[frame] = i
    return widest


# -- peers ----------------------------------------------------------------------------------


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of a tool."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def count_packets(path: Path) -> int:
    return int(capinfos(path).get("Number of packets", "-1"))


# -- the run --------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    packets: int
    data_bytes: int
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peer: str = ""  # the label of the row it is compared with
    extra_peer: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    def add(self, wall_cpu: tuple[float, float]) -> None:
        self.times.append(wall_cpu[0])
        self.cpu.append(wall_cpu[1])


def measure(args: argparse.Namespace, work: Workload, tmp: Path) -> tuple[list[Row], list[str]]:
    lines: list[str] = []
    n = work.pods
    encoded = [encode_stream(s) for s in work.streams]
    for i, (data, _, _) in enumerate(encoded):
        work.paths.append(tmp / f"pod{i}.pcap")
        work.paths[-1].write_bytes(data)
    single_records = sorted((r for s in work.streams for r in s), key=lambda r: r.ts_us)
    single_data, single_offsets, single_times = encode_stream(single_records)
    work.single = tmp / "single.pcap"
    work.single.write_bytes(single_data)
    multi = arrival_chunks([e[0] for e in encoded], [e[1] for e in encoded],
                           [e[2] for e in encoded], args.chunk, args.order)
    one = arrival_chunks([single_data], [single_offsets], [single_times], args.chunk, "time")
    del encoded, single_data
    window_ns = int(args.window_ms * 1e6)
    dup_window = min(1_000_000, 2 * dedup_window_packets(work) + 16)
    p, b = work.packets, work.data_bytes
    kept = p - work.copies
    rows = {
        "mergecap 1 file": Row("mergecap -w (1 file)", p, b),
        "a": Row("zsniff (a) 1 lane", p, b, peer="mergecap 1 file"),
        "mergecap": Row(f"mergecap -w ({n} files)", p, b),
        "b": Row(f"zsniff (b) {n} lanes, merge", p, b, peer="mergecap"),
        "editcap": Row(f"editcap -D {dup_window} (on mergecap's)", p, b),
        "merge+editcap": Row("mergecap + editcap -D", p, b),
        "c": Row(f"zsniff (c) {n} lanes, merge+dedup", p, b, peer="merge+editcap",
                 extra_peer="editcap"),
        "tcpdump": Row("tcpdump -r merged -w /dev/null", p, b),
    }
    merged = tmp / "mergecap.pcapng"
    deduped = tmp / "editcap.pcapng"
    out = {v: tmp / f"zsniff-{v}.pcapng" for v in "abc"}
    variants = {"a": (one, 1, False, False), "b": (multi, n, True, False),
                "c": (multi, n, True, True)}
    results: dict[str, ZsniffResult] = {}
    for _ in range(args.rounds):
        # Alternating: each round runs every client once, peers and zsniff interleaved.
        rows["mergecap 1 file"].add(
            timed(["mergecap", "-w", str(tmp / "m1.pcapng"), str(work.single)]))
        rows["mergecap"].add(timed(["mergecap", "-w", str(merged), *map(str, work.paths)]))
        rows["editcap"].add(
            timed(["editcap", "-D", str(dup_window), str(merged), str(deduped)]))
        rows["merge+editcap"].add((rows["mergecap"].times[-1] + rows["editcap"].times[-1],
                                   rows["mergecap"].cpu[-1] + rows["editcap"].cpu[-1]))
        rows["tcpdump"].add(timed(["tcpdump", "-r", str(merged), "-w", "/dev/null"]))
        for v, (chunks, lanes, merge, dedup) in variants.items():
            result = run_zsniff(chunks, lanes, out[v], merge=merge, dedup=dedup,
                                window_ns=window_ns, clock=args.clock)
            rows[v].add((result.seconds, result.cpu))
            results[v] = result
    (tmp / "tiny.pcap").write_bytes(encode_stream(work.streams[0][:1])[0])
    startup = statistics.median(
        timed(["mergecap", "-w", str(tmp / "tiny.pcapng"), str(tmp / "tiny.pcap")])[0]
        for _ in range(3))

    # -- correctness
    ok = True
    merged_count, deduped_count = count_packets(merged), count_packets(deduped)
    lines.append(f"checks, {n} pods:")
    for v in "abc":
        problems = check_output(out[v], work, dedup=v == "c", single=v == "a")
        r = results[v]
        if v == "c" and r.dropped != work.copies:
            problems.append(f"dropped {r.dropped} copies, generated {work.copies}")
        if r.late or r.forced:
            problems.append(f"reorder window: {r.late} late, {r.forced} forced out")
        ok = ok and not problems
        lines.append(f"  zsniff ({v}): " + ("; ".join(problems) if problems else
                     f"ok: {r.packets_out:,} packets on {1 if v == 'a' else n} interfaces, "
                     "each pod's packets in its order, frame times non-decreasing, "
                     + (f"{r.dropped:,} copies dropped = {work.copies:,} generated, "
                        if v == "c" else "")
                     + "capinfos agrees"))
    lines.append(f"  mergecap: {merged_count:,} packets (expected {p:,}); "
                 f"editcap -D {dup_window}: {deduped_count:,} kept, "
                 f"{merged_count - deduped_count:,} dropped (copies generated {work.copies:,})")
    ok = ok and merged_count == p and deduped_count == kept

    # -- what the window holds (an untimed round each, under tracemalloc)
    lines.append(f"reorder window ({args.window_ms:g} ms), {n} pods, instrumented round:")
    for v in "bc":
        held = Held()
        tracemalloc.start()
        run_zsniff(multi, n, out[v], merge=True, dedup=v == "c", window_ns=window_ns,
                   clock=args.clock, watch=held_watcher(held))
        held.traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        lines.append(
            f"  ({v}) held at most {held.packets:,} packets, {held.data_bytes / 1e6:.1f} MB of "
            f"packet data; largest span of packet time held {held.span_ns / 1e6:.1f} ms; "
            f"Python allocations peak {held.traced_peak / 1e6:.1f} MB "
            f"({held.traced_peak / max(1, held.packets):,.0f} B per packet held)")
    lines.append(f"  (mergecap start-up alone, a 1-packet file: {startup * 1000:.0f} ms, "
                 "included in its times; zsniff's times are in-process, no start-up)")
    if not ok:
        lines.append("  CHECKS FAILED")
    table = [rows[k] for k in ("mergecap 1 file", "a", "mergecap", "b", "editcap",
                               "merge+editcap", "c", "tcpdump")]
    for row in table:
        row.peer = rows[row.peer].label if row.peer else ""
        row.extra_peer = rows[row.extra_peer].label if row.extra_peer else ""
    return table, lines


def print_table(title: str, rows: list[Row]) -> None:
    by_label = {r.label: r for r in rows}
    print(f"\n{title}")
    print(f"  {'variant':<40} {'packets':>8} {'s':>7} {'packets/s':>9} {'MB/s':>6} "
          f"{'CPU s':>6}  ratio wall [CPU]")
    for r in rows:
        s, c = r.median, r.cpu_median
        ratio = ""
        for peer in (r.peer, r.extra_peer):
            if peer:
                other = by_label[peer]
                ratio += (f"{', ' if ratio else ''}{other.median / s:.2f}x "
                          f"[{other.cpu_median / c:.2f}x] {short(peer)}")
        print(f"  {r.label:<40} {r.packets:>8,} {s:>7.3f} {r.packets / s:>9,.0f} "
              f"{r.data_bytes / s / 1e6:>6.1f} {c:>6.3f}  {ratio}")
    print("  rounds, wall s: " + "; ".join(
        f"{short(r.label)} " + " ".join(f"{t:.3f}" for t in r.times) for r in rows))


def short(label: str) -> str:
    return label.split(" (")[0] if label.startswith(("mergecap", "editcap")) else label


def profile(args: argparse.Namespace, work: Workload, dedup: bool) -> str:
    encoded = [encode_stream(s) for s in work.streams]
    chunks = arrival_chunks([e[0] for e in encoded], [e[1] for e in encoded],
                            [e[2] for e in encoded], args.chunk, args.order)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        prof = cProfile.Profile()
        prof.enable()
        run_zsniff(chunks, work.pods, Path(tmp) / "p.pcapng", merge=True, dedup=dedup,
                   window_ns=int(args.window_ms * 1e6), clock=args.clock)
        prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(14)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=200_000, help="records over all pods")
    parser.add_argument("--pods", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per exec message")
    parser.add_argument("--order", choices=("time", "alternate"), default="time",
                        help="chunks in arrival (capture) time order, or lanes in turn")
    parser.add_argument("--east-west", type=float, default=0.5,
                        help="share of packets between two captured pods (seen twice)")
    parser.add_argument("--rate", type=float, default=50_000,
                        help="packets sent per second of capture time, all pods (an east/west "
                        "one is in two streams): the default makes ~65 MB/s of streams, what "
                        "the real cluster's stream path carries")
    parser.add_argument("--window-ms", type=float, default=DEFAULT_WINDOW_NS / 1e6)
    parser.add_argument("--clock", choices=("packet", "wall"), default="packet",
                        help="the window's clock: packet time (as live) or this run's")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"), help="where files go")
    parser.add_argument("--profile", action="store_true", help="cProfile of (b) and (c)")
    args = parser.parse_args()
    for tool in ("mergecap", "editcap", "capinfos", "tcpdump"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (apt install tshark tcpdump)")
    version = subprocess.run(["mergecap", "-v"], capture_output=True, text=True).stdout
    print(f"Python {sys.version.split()[0]}; {version.splitlines()[0]}; {args.rounds} rounds, "
          f"median; {args.chunk // 1024} KiB chunks in {args.order} order; files in {args.dir}")
    ok = True
    for pods in args.pods:
        work = make_workload(pods, args.packets, args.east_west, args.rate, seed=pods)
        span = (max(s[-1].ts_us for s in work.streams)
                - min(s[0].ts_us for s in work.streams)) / 1e6
        print(f"\n{pods} pods: {work.packets:,} packets ({work.copies:,} east/west copies), "
              f"{work.data_bytes / 1e6:.1f} MB of frames, {span:.2f} s of capture time; "
              "per pod " + ", ".join(f"{len(s):,}" for s in work.streams))
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            rows, lines = measure(args, work, Path(tmp))
        print_table(f"{pods} pods, {work.packets:,} packets in:", rows)
        for line in lines:
            print(line)
        ok = ok and not any("FAILED" in line for line in lines)
        if args.profile:
            for dedup in (False, True):
                print(f"\ncProfile, {pods} lanes, merge{'+dedup' if dedup else ''}:")
                print("\n".join(_top(profile(args, work, dedup))))
    if not ok:
        print("\nsome checks failed (see above)")


def _top(text: str) -> Iterator[str]:
    started = False
    for line in text.splitlines():
        if "ncalls" in line:
            started = True
        if started and line.strip():
            yield "  " + line.strip()


if __name__ == "__main__":
    main()
