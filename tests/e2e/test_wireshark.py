"""`--wireshark` with the real Wireshark on a virtual screen (Xvfb): it starts with our
options, receives the live stream, and closing its window ends the capture cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kubectl_zsniff.formats.pcapng import NameRecords, PacketRecord, read_capture
from tests.e2e.conftest import (
    IMAGE,
    ZSNIFF,
    assert_clean_error,
    assert_no_capture_left,
    classify,
    wait_until,
)
from tests.e2e.test_outputs import env_for, ping, wait_for_listening

pytestmark = [
    pytest.mark.skipif(shutil.which("wireshark") is None, reason="wireshark not installed"),
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb not installed"),
]


@pytest.fixture()
def display(tmp_path: Path) -> Any:
    number = 90 + os.getpid() % 50
    xvfb = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten",
                             "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if time.monotonic() > deadline or xvfb.poll() is not None:
            xvfb.kill()
            pytest.skip("Xvfb did not start")
        time.sleep(0.1)
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(timeout=10)


def wireshark_pids(parent: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,comm="], capture_output=True, text=True,
                         check=True).stdout
    return [int(pid) for pid, ppid, comm in (line.split(None, 2) for line in out.splitlines())
            if int(ppid) == parent and comm.strip().lower().startswith("wireshark")]


def received_echoes(folder: Path, client_ip: str, web_ip: str) -> dict[str, Any] | None:
    """The ICMP echoes between the two pods in Wireshark's capture file (and the names it
    got), once all 4 requests and 4 replies are there."""
    for path in folder.glob("wireshark_*"):
        try:
            blocks = list(read_capture(str(path)))
        except Exception:  # still being written
            continue
        pings = [classify(b.data) for b in blocks if isinstance(b, PacketRecord)]
        pings = [p for p in pings if p and p[0] == "icmp" and {p[1], p[2]} == {client_ip, web_ip}]
        names = {name for b in blocks if isinstance(b, NameRecords)
                 for _, names_of_ip in b.records for name in names_of_ip}
        if len(pings) >= 8:
            return {"pings": len(pings), "names": names}
    return None


def test_live_wireshark_then_closing_it_stops_the_capture(
    cluster: Any, display: str, kube_home: Path, tmp_path: Path
) -> None:
    cluster.create_pod("ws-web", command=["sleep", "3600"])
    cluster.create_pod("ws-client", command=["sleep", "3600"])
    web_ip = cluster.pod_ip("default", "ws-web")
    env = env_for(kube_home, cluster.kubeconfig)
    # Wireshark's capture child (dumpcap) keeps what it receives in a file in TMPDIR:
    # that file is what Wireshark got.
    received_dir = tmp_path / "wireshark-tmp"
    received_dir.mkdir()
    env.update(DISPLAY=display, XDG_RUNTIME_DIR=str(tmp_path), QT_QPA_PLATFORM="xcb",
               TMPDIR=str(received_dir))
    proc = subprocess.Popen([*ZSNIFF, "ws-web", "--wireshark", "--image", cluster.capture_image,
                             "icmp"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    try:
        wait_for_listening(proc.stderr)
        ping(cluster, "ws-client", web_ip)
        pids: list[int] = []
        deadline = time.monotonic() + 30
        while not pids and time.monotonic() < deadline:
            pids = wireshark_pids(proc.pid)
            time.sleep(0.2)
        assert pids, "Wireshark was not started"
        argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
        assert b"nameres.network_name:TRUE" in argv
        assert b"gui.window_title:default/ws-web" in argv
        client_ip = cluster.pod_ip("default", "ws-client")
        echoes = wait_until(lambda: received_echoes(received_dir, client_ip, web_ip), 30,
                            "Wireshark to receive the 8 pings", interval=0.5)
        assert echoes["names"] >= {"default/ws-web", "default/ws-client"}, echoes
        time.sleep(1)  # let it draw the packets
        if shutil.which("import"):
            subprocess.run(["import", "-display", display, "-window", "root",
                            str(tmp_path / "wireshark.png")], check=False, timeout=30)
        started_waiting = time.monotonic()
        os.kill(pids[0], signal.SIGTERM)  # the user closes the window
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # No packet came after Wireshark closed: zsniff noticed by itself, within a second or two.
    assert time.monotonic() - started_waiting < 15
    assert proc.returncode == 17, err
    assert "closed by the reader: Wireshark" in err
    assert "tcpdump stopped in the pod (verified)" in err
    deadline = time.monotonic() + 10
    while any("tcpdump" in " ".join(p.argv) for p in cluster.processes("default", "ws-web")):
        assert time.monotonic() < deadline, "tcpdump left running in the pod"
        time.sleep(0.2)
    cluster.delete_pod("ws-client")
    cluster.delete_pod("ws-web")


def test_wireshark_that_cannot_start_says_why(
    cluster: Any, kube_home: Path, tmp_path: Path
) -> None:
    """Issue 9, defect 4: no display (as over SSH) gave "closed by the reader: Wireshark",
    exit 17, with Wireshark's own reason sent to /dev/null."""
    cluster.create_pod("ws-nodisplay", command=["sleep", "3600"])
    env = env_for(kube_home, cluster.kubeconfig)
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        env.pop(name, None)
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    try:
        result = subprocess.run(
            [*ZSNIFF, "ws-nodisplay", "--wireshark", "--image", IMAGE, "-d", "60s"],
            env=env, capture_output=True, text=True, timeout=90)
        assert_clean_error(result, 15, "Wireshark failed", "display")
        assert "closed by the reader" not in result.stderr
        assert_no_capture_left(cluster, "default", "ws-nodisplay")
    finally:
        cluster.delete_pod("ws-nodisplay")
