"""Wireshark's hosts file: `IP NAME` per line, `#` comments (`tshark -H FILE -N n`).

Written by `kubectl zsniff hosts`, read by `enrich --names-from`. A line that is not an entry
raises ``HostsFormatError``; the caller says which file and flag it came from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from kubectl_zsniff import __version__


class HostsFormatError(ValueError):
    def __init__(self, number: int, line: str) -> None:
        super().__init__(f"line {number}, is not a hosts entry (`IP NAME`): "
                         f"{line.strip()[:80]!r}")
        self.number = number
        self.line = line


def hosts_file_text(names: Mapping[str, str]) -> str:
    """The file's text, one entry per address, ordered by name (pods of one namespace
    together)."""
    lines = [f"# kubectl-zsniff {__version__}: Kubernetes names for Wireshark"]
    lines += [f"{ip}\t{name}" for ip, name in sorted(names.items(), key=lambda kv: kv[1])]
    return "\n".join(lines) + "\n"


def parse_hosts(text: str) -> dict[str, str]:
    """Address -> name; the address in its canonical text. Extra words after the name (other
    aliases) are ignored, as Wireshark keeps the first."""
    names: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            address = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            address = ""
        if len(fields) < 2 or not address:
            raise HostsFormatError(number, line)
        names[address] = fields[1]
    return names
