"""A stand-in for `zeek -C -r -` (no Zeek installs on these machines), run as the `zeek` program.

It behaves like Zeek where the tests need it to:
- reads a classic pcap stream on stdin, record by record, as libpcap does;
- a stream cut inside a record ends as Zeek ends: "truncated dump file" on stderr, exit 1, and
  none of its logs (only packet_filter.log), which is what a real Zeek 6.0.9 did;
- writes conn.log rows (Zeek's real header, from ../shared/data/zeek) as it goes: one row per
  ICMP echo request and per TCP SYN, buffered and flushed once a second or on exit, as Zeek's
  writers hold rows back before they reach the file.

Knobs (environment): ZEEK_STANDIN_DELAY seconds before reading anything (Zeek loading its
scripts); ZEEK_STANDIN_READ_PAUSE seconds slept after each 4 KiB read (a slow reader);
ZEEK_STANDIN_BASELINE the conn.log whose header is used.
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import IO

FLUSH_SECONDS = 1.0


def _addresses(frame: bytes) -> tuple[str, str, str, int, int] | None:
    """(proto, src, dst, sport, dport) of an ICMP echo request or a TCP SYN; else None."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        proto = frame[23]
        src, dst = ipaddress.ip_address(frame[26:30]), ipaddress.ip_address(frame[30:34])
        l4 = frame[14 + ihl:]
        icmp = 1
    elif ethertype == 0x86DD and len(frame) >= 54:
        proto = frame[20]
        src, dst = ipaddress.ip_address(frame[22:38]), ipaddress.ip_address(frame[38:54])
        l4 = frame[54:]
        icmp = 58
    else:
        return None
    if proto == icmp and l4 and l4[0] in (8, 128):
        return "icmp", str(src), str(dst), l4[0], 0
    if proto == 6 and len(l4) >= 14 and (l4[13] & 0x12) == 0x02:
        sport, dport = struct.unpack_from("!HH", l4)
        return "tcp", str(src), str(dst), sport, dport
    return None


class _Stdin:
    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.buf = bytearray()
        self.eof = False

    def take(self, n: int) -> bytes | None:
        """Exactly n bytes, or None at the end of the stream (short: a torn record)."""
        while len(self.buf) < n and not self.eof:
            chunk = os.read(0, 4096)
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
            if self.pause:
                time.sleep(self.pause)
        if len(self.buf) < n:
            return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def main() -> int:
    Path("argv.json").write_text(json.dumps(sys.argv[1:]))
    time.sleep(float(os.environ.get("ZEEK_STANDIN_DELAY", "0")))
    stdin = _Stdin(float(os.environ.get("ZEEK_STANDIN_READ_PAUSE", "0")))
    received = open("received.pcap", "wb")  # noqa: SIM115 - written record by record
    # Zeek's packet_filter.log: one row, no connection fields.
    Path("packet_filter.log").write_text(
        "#separator \\x09\n#path\tpacket_filter\n#fields\tts\tnode\tfilter\tinit\tsuccess\n"
        "#types\ttime\tstring\tstring\tbool\tbool\n0.000000\tzeek\tip or not ip\tT\tT\n")
    header = stdin.take(24)
    if header is None:
        print("fatal error: failed to read a pcap header", file=sys.stderr)
        return 1
    received.write(header)
    endian = "<" if header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nanos = header[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    baseline = os.environ["ZEEK_STANDIN_BASELINE"]
    lines = [x for x in Path(baseline).read_text().splitlines(True) if x.startswith("#")]
    head = [line for line in lines if not line.startswith("#close")]
    fields = next(x for x in head if x.startswith("#fields")).rstrip("\n").split("\t")[1:]
    pending: list[str] = []  # rows not yet flushed (Zeek's buffering)
    log = None
    last_flush = time.monotonic()
    rows = 0
    while True:
        record = stdin.take(16)
        if record is None:
            break
        sec, frac, caplen, _ = struct.unpack(endian + "IIII", record)
        data = stdin.take(caplen)
        if data is None:
            # libpcap's words; Zeek then exits without flushing any of its logs.
            print("fatal error in <no location>: problem with trace file - (truncated dump "
                  "file; tried to read 16 header bytes, only got fewer)", file=sys.stderr)
            received.close()
            if log is not None:
                log.close()
                os.unlink("conn.log")
            return 1
        received.write(record + data)
        found = _addresses(data)
        if found is not None:
            proto, src, dst, sport, dport = found
            cells = dict.fromkeys(fields, "-")
            ts = f"{sec}.{frac // 1000 if nanos else frac:06d}"
            cells.update({"ts": ts, "uid": f"C{rows}", "id.orig_h": src,
                          "id.orig_p": str(sport), "id.resp_h": dst, "id.resp_p": str(dport),
                          "proto": proto})
            pending.append("\t".join(cells[f] for f in fields) + "\n")
            rows += 1
        if pending and time.monotonic() - last_flush >= FLUSH_SECONDS:
            log = log or _open_log(head)
            log.writelines(pending)
            log.flush()
            pending = []
            last_flush = time.monotonic()
    if stdin.buf:  # bytes left that are not a whole record header
        print("fatal error: truncated dump file", file=sys.stderr)
        if log is not None:
            log.close()
            os.unlink("conn.log")
        return 1
    received.close()
    log = log or _open_log(head)
    log.writelines(pending)
    log.write("#close\t1970-01-01-00-00-00\n")
    log.close()
    return 0


def _open_log(head: list[str]) -> IO[str]:
    log = open("conn.log", "w")  # noqa: SIM115 - appended to as rows come
    log.writelines(head)
    log.flush()
    return log


if __name__ == "__main__":
    sys.exit(main())
