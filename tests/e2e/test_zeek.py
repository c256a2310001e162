"""`--zeek DIR` on a live capture: Zeek gets the stream, its logs come back with pod names.

No Zeek binary installs on these machines, so the zeek PROGRAM is a stand-in (named so in the
test): it reads the stream on stdin as `zeek -r -` would, keeps it, and writes a conn.log with
the real Zeek header of ../shared/data/zeek for the connections it finds (via tshark). Everything
else is real: the CLI, the cluster, the traffic, the enrichment, and parsezeeklogs reading back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import IMAGE, ZSNIFF
from tests.e2e.test_outputs import env_for
from tests.shared_data import ZEEK_DATA

STAND_IN_ZEEK = textwrap.dedent("""\
    #!{python}
    import json, subprocess, sys
    args = sys.argv[1:]
    open("argv.json", "w").write(json.dumps(args))
    data = sys.stdin.buffer.read()
    open("received.pcap", "wb").write(data)
    header = [l for l in open({baseline!r}) if l.startswith("#") and not l.startswith("#close")]
    fields = next(l for l in header if l.startswith("#fields")).rstrip("\\n").split("\\t")[1:]
    rows = subprocess.run(
        ["tshark", "-r", "received.pcap", "-Y", "icmp.type == 8", "-T", "fields",
         "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    with open("conn.log", "w") as log:
        log.writelines(header)
        for i, row in enumerate(rows):
            ts, src, dst = row.split("\\t")
            cells = dict.fromkeys(fields, "-")
            cells.update({{"ts": ts, "uid": f"C{{i}}", "id.orig_h": src, "id.orig_p": "8",
                          "id.resp_h": dst, "id.resp_p": "0", "proto": "icmp"}})
            log.write("\\t".join(cells[f] for f in fields) + "\\n")
        log.write("#close\\t1970-01-01-00-00-00\\n")
""")


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.skipif(shutil.which("ping") is None, reason="ping (iputils-ping) not installed")
def test_zeek_on_live_capture_with_stand_in_zeek_program(
    cluster: Any, kube_home: Path, tmp_path: Path
) -> None:
    from parsezeeklogs import ZeekLog

    baseline = ZEEK_DATA / "decanon" / "opt.basic_conn.log"
    if not baseline.exists():
        pytest.skip(f"shared Zeek data not found at {ZEEK_DATA}")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    zeek = bindir / "zeek"
    zeek.write_text(STAND_IN_ZEEK.format(python=sys.executable, baseline=str(baseline)))
    zeek.chmod(0o755)

    cluster.create_pod("zeek-web", command=["sleep", "3600"])
    cluster.create_pod("zeek-client", command=["sleep", "3600"])
    web_ip = cluster.pod_ip("default", "zeek-web")
    logs = tmp_path / "logs"
    env = env_for(kube_home, cluster.kubeconfig)
    env["PATH"] = f"{bindir}:{os.environ['PATH']}"
    capture = subprocess.Popen(
        [*ZSNIFF, "zeek-web", "--zeek", str(logs), "--image", IMAGE, "icmp"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    assert capture.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = capture.stderr.readline()
        if "listening on" in line or (not line and capture.poll() is not None):
            break
    ping = cluster.run_in_pod("default", "zeek-client",
                              ["ping", "-c", "3", "-i", "0.2", web_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ping.wait(timeout=30)
    time.sleep(0.5)
    capture.send_signal(2)
    _, err = capture.communicate(timeout=120)
    assert capture.returncode == 130, err
    assert "Zeek logs in" in err

    # Zeek was run the way the README says, on tcpdump's classic pcap (one link type).
    assert json.loads((logs / "raw" / "argv.json").read_text()) == ["-C", "-r", "-"]
    magic = (logs / "raw" / "received.pcap").read_bytes()[:4]
    assert magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
    records = list(ZeekLog(str(logs / "conn.log")))
    assert len(records) == 3
    for record in records:
        assert record["orig_pod"] == "default/zeek-client"
        assert record["resp_pod"] == "default/zeek-web"
        assert record["orig_namespace"] == "default"
    cluster.delete_pod("zeek-client")
    cluster.delete_pod("zeek-web")


STAND_IN = Path(__file__).with_name("zeek_standin.py")


def install_stand_in(bindir: Path) -> Path:
    """The stand-in Zeek of zeek_standin.py as the `zeek` program first on PATH."""
    bindir.mkdir(parents=True, exist_ok=True)
    zeek = bindir / "zeek"
    zeek.write_text(f"#!/bin/sh\nexec {sys.executable} {STAND_IN} \"$@\"\n")
    zeek.chmod(0o755)
    return zeek


def stand_in_env(kube_home: Path, kubeconfig: Path, bindir: Path,
                 **knobs: str) -> dict[str, str]:
    env = env_for(kube_home, kubeconfig)
    env["PATH"] = f"{bindir}:{os.environ['PATH']}"
    env["ZEEK_STANDIN_BASELINE"] = str(ZEEK_DATA / "decanon" / "opt.basic_conn.log")
    env.update(knobs)
    return env


def whole_pcap_records(path: Path) -> tuple[int, int]:
    """(records, bytes left over that are not a whole record) of a classic pcap file."""
    import struct

    data = path.read_bytes()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    offset, records = 24, 0
    while offset + 16 <= len(data):
        caplen = struct.unpack_from(endian + "I", data, offset + 8)[0]
        if offset + 16 + caplen > len(data):
            break
        offset += 16 + caplen
        records += 1
    return records, len(data) - offset


@pytest.mark.skipif(not (ZEEK_DATA / "decanon").exists(), reason="shared Zeek data not found")
def test_zeek_that_starts_late_and_reads_slowly_gets_whole_records_and_its_logs_named(
    cluster: Any, kube_home: Path, tmp_path: Path
) -> None:
    """A real Zeek takes seconds to load its scripts: Ctrl-C during that time must not cut the
    stream to Zeek inside a record (Zeek then loses every log), and Zeek's logs still get
    their names. The reply is ~300 KB, far more than a pipe holds."""
    from parsezeeklogs import ZeekLog

    from tests.e2e.conftest import drop_pair, make_pair, wait_capture_live

    bindir = tmp_path / "bin"
    install_stand_in(bindir)
    pair = make_pair(cluster, prefix="zslow")
    logs = tmp_path / "logs"
    env = stand_in_env(kube_home, cluster.kubeconfig, bindir,
                       ZEEK_STANDIN_DELAY="12", ZEEK_STANDIN_READ_PAUSE="0.002")
    try:
        capture = subprocess.Popen(
            [*ZSNIFF, pair.web, "--zeek", str(logs), "--image", cluster.capture_image,
             "tcp port 8080"],
            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        wait_capture_live(cluster, "default", pair.web, proc=capture)
        pair.run_traffic(http=1, size=300_000, families=(4,))
        time.sleep(0.5)
        capture.send_signal(2)
        _, err = capture.communicate(timeout=120)
    finally:
        drop_pair(pair)
    assert capture.returncode == 130, err
    records, torn = whole_pcap_records(logs / "raw" / "received.pcap")
    assert torn == 0, f"the stream to Zeek ended inside a record ({torn} bytes): {err}"
    assert records > 10 and (logs / "raw" / "received.pcap").stat().st_size > 300_000, records
    rows = list(ZeekLog(str(logs / "conn.log")))
    assert len(rows) == 1, rows  # the one TCP SYN of the GET
    assert rows[0]["orig_pod"] == f"default/{pair.client}"
    assert rows[0]["resp_pod"] == f"default/{pair.web}"
    assert "Zeek logs in" in err
    assert "sees it twice" not in err  # one pod: nothing is seen twice


@pytest.mark.skipif(not (ZEEK_DATA / "decanon").exists(), reason="shared Zeek data not found")
def test_zeek_refuses_a_folder_holding_logs_of_an_earlier_run(
    cluster: Any, kube_home: Path, tmp_path: Path, fresh_pod: str
) -> None:
    """Zeek never deletes old logs: a reused --zeek DIR would list (and name again) an earlier
    run's logs as this run's. It is refused before the pod is touched, the old logs kept."""
    bindir = tmp_path / "bin"
    install_stand_in(bindir)
    logs = tmp_path / "logs"
    logs.mkdir()
    old = (ZEEK_DATA / "decanon" / "opt.basic_dns.log").read_bytes()
    (logs / "dns.log").write_bytes(old)
    env = stand_in_env(kube_home, cluster.kubeconfig, bindir)
    done = subprocess.run(
        [*ZSNIFF, fresh_pod, "--zeek", str(logs), "--image", cluster.capture_image, "icmp"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 16, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("error: ") and str(logs) in lines[0] and "dns.log" in lines[0]
    assert lines[1].startswith("hint: ") and "empty" in lines[1]
    assert "injected" not in done.stderr and "Traceback" not in done.stderr
    assert (logs / "dns.log").read_bytes() == old
    assert not (logs / "raw").exists()  # Zeek was never started


@pytest.mark.skipif(not (ZEEK_DATA / "decanon").exists(), reason="shared Zeek data not found")
def test_zeek_on_two_talking_pods_gets_each_packet_once(
    cluster: Any, kube_home: Path, tmp_path: Path
) -> None:
    """Both ends captured: each packet between them is in both pods' streams. For Zeek the
    copies are dropped by default (--dedup is on with --zeek): one conn.log row for the one
    echo request. With --no-dedup Zeek gets it twice (two rows), and zsniff warns."""
    from parsezeeklogs import ZeekLog

    from tests.e2e.conftest import drop_pair, make_pair, wait_capture_live

    bindir = tmp_path / "bin"
    install_stand_in(bindir)
    pair = make_pair(cluster, prefix="ztwice")
    env = stand_in_env(kube_home, cluster.kubeconfig, bindir)

    def capture(logs: Path, *flags: str) -> tuple[list[dict[str, Any]], str]:
        proc = subprocess.Popen(
            [*ZSNIFF, pair.web, f"pod/{pair.client}", "--zeek", str(logs),
             "--image", cluster.capture_image, *flags, "icmp"],
            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        wait_capture_live(cluster, "default", pair.web, proc=proc)
        wait_capture_live(cluster, "default", pair.client, proc=proc)
        pair.run_traffic(icmp=1, families=(4,))
        time.sleep(0.5)
        proc.send_signal(2)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        return list(ZeekLog(str(logs / "conn.log"))), err

    try:
        once, once_err = capture(tmp_path / "once")
        twice, twice_err = capture(tmp_path / "twice", "--no-dedup")
    finally:
        drop_pair(pair)
    assert len(once) == 1, once
    assert "sees it twice" not in once_err, once_err
    assert "copies of packets seen at both ends dropped" in once_err, once_err
    # What the default prevents, as it happens: the one echo request, logged twice.
    assert len(twice) == 2 and twice[0]["id.orig_h"] == twice[1]["id.orig_h"], twice
    warning = [line for line in twice_err.splitlines() if "sees it twice" in line]
    assert len(warning) == 1 and warning[0].startswith("zsniff: warning: "), twice_err
    assert "both ends" in warning[0] and "--no-dedup" in warning[0]


def _data_rows(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [x for x in text.splitlines() if x and not x.startswith("#")]


@pytest.mark.skipif(not (ZEEK_DATA / "decanon").exists(), reason="shared Zeek data not found")
def test_zeek_rows_are_named_while_the_capture_runs_and_end_as_the_offline_enrich(
    cluster: Any, kube_home: Path, tmp_path: Path
) -> None:
    """The stand-in writes a conn.log row per echo request, held back and flushed once a second
    as Zeek's writers do. Mid-capture, rows are already named in DIR and in the --zeek-json
    stream; at the end DIR/conn.log is byte for byte what `enrich` makes of raw/conn.log."""
    from tests.e2e.conftest import drop_pair, make_pair, wait_capture_live, wait_until

    bindir = tmp_path / "bin"
    install_stand_in(bindir)
    pair = make_pair(cluster, prefix="zlive")
    logs = tmp_path / "logs"
    stream = tmp_path / "zeek.jsonl"
    env = stand_in_env(kube_home, cluster.kubeconfig, bindir)
    try:
        capture = subprocess.Popen(
            [*ZSNIFF, pair.web, "--zeek", str(logs), "--zeek-json", str(stream),
             "--image", cluster.capture_image, "icmp"],
            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        wait_capture_live(cluster, "default", pair.web, proc=capture)
        traffic = pair.traffic(icmp=1, families=(4,), seconds=30, pause=0.3)
        try:
            named = wait_until(
                lambda: [r for r in _data_rows(logs / "conn.log") if f"default/{pair.web}" in r],
                20, "a named conn.log row in DIR while capturing")
            live_json = wait_until(
                lambda: [x for x in stream.read_text().splitlines() if '"_path":"conn"' in x]
                if stream.exists() else [], 10, "a conn row in the --zeek-json stream")
            assert capture.poll() is None  # all of this while the capture runs
        finally:
            traffic.kill()
            traffic.wait()
        assert named
        first = json.loads(live_json[0])
        assert first["resp_pod"] == f"default/{pair.web}"
        assert first["orig_pod"] == f"default/{pair.client}"
        capture.send_signal(2)
        _, err = capture.communicate(timeout=120)
        assert capture.returncode == 130, err
        # The offline enrich of Zeek's raw log, with the cluster's names as they are now.
        offline = tmp_path / "offline"
        done = subprocess.run(
            [*ZSNIFF, "enrich", str(logs / "raw" / "conn.log"), "-o", str(offline),
             "--kubeconfig", str(cluster.kubeconfig)],
            env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    finally:
        drop_pair(pair)
    final = (logs / "conn.log").read_bytes()
    assert final == (offline / "conn.log").read_bytes()
    rows = _data_rows(logs / "conn.log")
    assert len(rows) >= 3 and final.endswith(b"#close\t1970-01-01-00-00-00\n")
    assert stream.read_bytes().endswith(b"\n")  # whole lines only
    every = [json.loads(x) for x in stream.read_bytes().splitlines()]
    assert [o["_path"] for o in every if o["_path"] != "conn"] == ["packet_filter"]
    lines = [o for o in every if o["_path"] == "conn"]
    assert len(lines) == len(rows)  # one JSON line per row
    context = subprocess.run(
        ["python", "-c", "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))"
         "['current-context'])", str(cluster.kubeconfig)],
        capture_output=True, text=True, check=True).stdout.strip()
    for obj in lines:
        assert obj["k8s_context"] == context
        assert obj["resp_pod"] == f"default/{pair.web}" and obj["resp_namespace"] == "default"
        assert obj["resp_kind"] == "pod"
    assert "JSON lines to" in err


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed (scripts/setup)")
@pytest.mark.skipif(not (ZEEK_DATA / "decanon").exists(), reason="shared Zeek data not found")
def test_zeek_json_on_stdout_piped_into_jq_with_a_log_choice_and_no_folder_left(
    cluster: Any, kube_home: Path, tmp_path: Path
) -> None:
    """`--zeek-json - | jq -c`: no --zeek DIR, so Zeek works in a private folder that is gone
    afterwards; --zeek-logs leaves out what is not asked for, and the summary counts it."""
    from tests.e2e.conftest import drop_pair, make_pair, wait_capture_live

    bindir = tmp_path / "bin"
    install_stand_in(bindir)
    pair = make_pair(cluster, prefix="zjq")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = stand_in_env(kube_home, cluster.kubeconfig, bindir, TMPDIR=str(scratch))
    try:
        capture = subprocess.Popen(
            [*ZSNIFF, pair.web, "--zeek-json", "-", "--zeek-logs", "conn",
             "--image", cluster.capture_image, "icmp"],
            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        jq = subprocess.Popen(["jq", "-c", "{p: ._path, o: .orig_pod, r: .resp_pod}"],
                              stdin=capture.stdout, stdout=subprocess.PIPE)
        assert capture.stdout is not None
        capture.stdout.close()  # jq holds the pipe now
        wait_capture_live(cluster, "default", pair.web, proc=capture)
        assert len(list(scratch.glob("zsniff-zeek-*"))) == 1  # where Zeek works meanwhile
        pair.run_traffic(icmp=2, families=(4,))
        time.sleep(0.5)
        capture.send_signal(2)
        _, err_bytes = capture.communicate(timeout=120)
        out, _ = jq.communicate(timeout=30)
    finally:
        drop_pair(pair)
    err = err_bytes.decode()
    assert capture.returncode == 130, err
    assert jq.returncode == 0
    rows = [json.loads(x) for x in out.splitlines()]
    assert rows == [{"p": "conn", "o": f"default/{pair.client}", "r": f"default/{pair.web}"}] * 2
    assert "2 JSON lines to standard output" in err
    # packet_filter.log is Zeek's too, and was not asked for.
    assert "conn 2 kept" in err and "packet_filter 0 kept, 1 dropped" in err
    assert list(scratch.glob("zsniff-zeek-*")) == []  # Zeek's private folder is removed
