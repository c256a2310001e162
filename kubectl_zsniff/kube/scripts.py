"""The shell the capture containers run (busybox sh, dash, bash alike): the container's
bounded lifetime, and the wrapper each capture's exec runs tcpdump in."""

from __future__ import annotations

# The container's main process: it lives while a capture touches its heartbeat file and exits
# IDLE seconds after the last touch, so a vanished laptop never leaves it running for long.
LIFETIME_SCRIPT = (
    'hb="/tmp/.$1"; touch "$hb"; '
    'while [ $(( $(date +%s) - $(date -r "$hb" +%s) )) -lt "$2" ]; do sleep 2; done'
)

# Runs tcpdump with the user's arguments as "$@" (never interpolated by a shell). It reports
# tcpdump's PID, keeps the heartbeat fresh while tcpdump lives, and stops tcpdump when stdin
# closes: that is how a client (or the node, when the client vanishes) ends the capture. Each
# line the client sends on stdin becomes a SIGUSR1, on which tcpdump prints its counters
# (captured, received, dropped by the kernel) and goes on: live drop counts, and stderr bytes
# that keep a quiet capture's stream busy from the pod's side. The client sends lines only
# once tcpdump said "listening" (its handler is set by then; before, USR1 would kill it).
def _capture_script(runner: str) -> str:
    return (
        'echo "zsniff-pid $$" >&2; '
        "exec 3<&0; "
        "( while read -r _ <&3; do kill -USR1 $$; done; kill -TERM $$ 2>/dev/null ) "
        ">/dev/null 2>&1 & "
        '( while kill -0 $$ 2>/dev/null; do touch "$hb"; sleep 2; done ) '
        "</dev/null >/dev/null 2>&1 & "
        f'exec {runner}tcpdump "$@" 3<&-'
    )


CAPTURE_SCRIPT = 'hb="/tmp/.$1"; shift; ' + _capture_script("")

# --via-node: the same, run from a hostPID capture pod inside the target pod's network
# namespace. Every process of a pod sits in a cgroup named after the pod's UID (cgroupfs:
# pod<uid>; systemd driver: pod<uid with _ for ->), the sandbox's pause process first, so the
# namespace is found without the container runtime's socket and survives container restarts.
# nsenter execs tcpdump in place, so $$ stays tcpdump's PID for the stop and the counters.
NO_POD_PROCESS_EXIT = 125
VIA_NODE_CAPTURE_SCRIPT = (
    'hb="/tmp/.$1"; uid="$2"; shift 2; alt=$(echo "$uid" | tr - _); pid=""; '
    "for p in /proc/[0-9]*; do "
    'case "$(cat "$p/cgroup" 2>/dev/null)" in '
    '*"pod$uid"*|*"pod$alt"*) pid="${p#/proc/}"; break;; esac; done; '
    '[ -n "$pid" ] || { echo "zsniff: no process of pod $uid on this node" >&2; '
    f"exit {NO_POD_PROCESS_EXIT}; }}; "
    + _capture_script('nsenter --net="/proc/$pid/ns/net" ')
)


def capture_command(container_name: str, tcpdump_args: list[str],
                    enter_pod_uid: str | None = None) -> list[str]:
    """The exec command that runs tcpdump; with `enter_pod_uid`, in that pod's network
    namespace (run from a hostPID capture pod on its node)."""
    if enter_pod_uid:
        return ["sh", "-c", VIA_NODE_CAPTURE_SCRIPT, "zsniff", container_name, enter_pod_uid,
                *tcpdump_args]
    return ["sh", "-c", CAPTURE_SCRIPT, "zsniff", container_name, *tcpdump_args]
