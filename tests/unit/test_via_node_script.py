"""The --via-node capture command, run by a real POSIX shell: where no process of the pod is on
the node it says so and exits with its own status (never runs tcpdump elsewhere), and that
ending becomes one clear error naming the pod; a refused namespace entry is said as such."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kubectl_zsniff.capture.run import TcpdumpReport, tcpdump_failure
from kubectl_zsniff.errors import ExitStatus
from kubectl_zsniff.kube.pod import CapturePlace, PodInfo
from kubectl_zsniff.kube.scripts import NO_POD_PROCESS_EXIT, capture_command
from kubectl_zsniff.options import TcpdumpOptions

SHELLS = [s for s in ("/bin/busybox", "/bin/dash", "/bin/sh") if shutil.which(s)]
# A UID no process on this machine has in its cgroup path.
ABSENT_UID = "00000000-dead-beef-0000-000000000000"
LOCKED = PodInfo("locked", "web-1", "node-a", ("app",), "Running", ("10.0.0.9",),
                 uid=ABSENT_UID, via=CapturePlace("zsniff", "zsniff-node-a-1", "capture"))


@pytest.mark.parametrize("shell", SHELLS)
def test_no_process_of_the_pod_on_the_node_ends_before_tcpdump(shell: str) -> None:
    argv = capture_command("capture", ["-i", "eth0", "-w", "-"], ABSENT_UID)
    assert argv[:2] == ["sh", "-c"] and ABSENT_UID in argv and "-w" in argv
    run = [shell, "sh", *argv[1:]] if shell.endswith("busybox") else [shell, *argv[1:]]
    result = subprocess.run(run, capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == NO_POD_PROCESS_EXIT, result.stderr
    assert f"zsniff: no process of pod {ABSENT_UID} on this node" in result.stderr
    assert "zsniff-pid" not in result.stderr  # nothing started


def test_without_a_pod_uid_the_command_is_the_plain_one() -> None:
    assert capture_command("zsniff-1", ["-i", "eth0"]) == capture_command("zsniff-1",
                                                                          ["-i", "eth0"], "")
    assert "nsenter" not in " ".join(capture_command("zsniff-1", ["-i", "eth0"]))
    assert "nsenter" in " ".join(capture_command("capture", ["-i", "eth0"], ABSENT_UID))


def test_the_missing_pod_is_one_error_with_a_hint() -> None:
    report = TcpdumpReport()
    report.feed(f"zsniff: no process of pod {ABSENT_UID} on this node\n".encode())
    err = tcpdump_failure(report, NO_POD_PROCESS_EXIT, TcpdumpOptions(), LOCKED, "capture")
    assert err.status == ExitStatus.POD_NOT_RUNNING
    assert "no process of pod locked/web-1 runs on node node-a" in err.message
    assert "kubectl get pod -n locked web-1 -o wide" in err.hint


def test_a_refused_namespace_entry_says_what_the_capture_pod_needs() -> None:
    report = TcpdumpReport()
    report.feed(b"nsenter: reassociate to namespace 'ns/net' failed: Operation not permitted\n")
    err = tcpdump_failure(report, 1, TcpdumpOptions(), LOCKED, "capture")
    assert err.status == ExitStatus.CAPTURE_FAILED
    assert "could not enter the network namespace of locked/web-1" in err.message
    assert "SYS_ADMIN and SYS_PTRACE" in err.hint and "--privileged" in err.hint
