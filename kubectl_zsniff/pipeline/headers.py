"""The blocks that say what a pcapng section holds: its header comment, one interface per pod."""

from __future__ import annotations

from collections.abc import Sequence

from kubectl_zsniff import __version__
from kubectl_zsniff.formats.pcap import PcapHeader
from kubectl_zsniff.formats.pcapng import interface_description_block, section_header_block
from kubectl_zsniff.kube.pod import PodInfo
from kubectl_zsniff.options import TcpdumpOptions


def section_header(pods: Sequence[tuple[PodInfo, str]], context: str,
                   opts: TcpdumpOptions) -> bytes:
    """The SHB, its comment naming where the capture comes from; `pods`: (pod, container)."""
    if len(pods) == 1:
        first, container = pods[0]
        where = (
            f"namespace {first.namespace}; pod {first.name}; node {first.node or '-'}; "
            f"container {container}"
        )
    else:
        where = "pods " + ", ".join(pod.title for pod, _ in pods)
    comment = (
        f"kubectl-zsniff {__version__}; context {context or '-'}; {where}; "
        f"interface {opts.interface}"
        + (f"; filter {opts.bpf_filter}" if opts.bpf_filter else "")
    )
    return section_header_block(comment, userappl=f"kubectl-zsniff {__version__}")


def interface_block(pod: PodInfo, container: str, header: PcapHeader,
                    opts: TcpdumpOptions) -> bytes:
    """The IDB of one pod's stream, named as zsniff prints the pod."""
    return interface_description_block(
        header.linktype,
        header.snaplen,
        name=pod.title,
        description=(
            f"node {pod.node or '-'}, "
            + (f"capture pod {pod.namespace}/{pod.name}, " if pod.label else "")
            + (f"from capture pod {pod.via.namespace}/{pod.via.pod} in the pod's network "
               "namespace, " if pod.via is not None else "")
            + f"container {container}, "
            f"interface {opts.interface}"
        ),
        tsresol_nanos=header.nanosecond,
        filter=opts.bpf_filter or None,
    )
