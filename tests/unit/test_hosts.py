"""Wireshark hosts files (formats/hosts.py): written, read back, faults told by line."""

from __future__ import annotations

import pytest

from kubectl_zsniff.formats.hosts import HostsFormatError, hosts_file_text, parse_hosts


def test_what_is_written_reads_back() -> None:
    names = {"10.0.0.2": "shop/web", "fd00::0:1": "shop/db-0", "10.0.0.9": "node/worker-1"}
    text = hosts_file_text(names)
    assert text.startswith("# kubectl-zsniff ")
    assert text.splitlines()[1:] == ["10.0.0.9\tnode/worker-1", "fd00::0:1\tshop/db-0",
                                     "10.0.0.2\tshop/web"]
    assert parse_hosts(text) == {"10.0.0.2": "shop/web", "fd00::1": "shop/db-0",
                                 "10.0.0.9": "node/worker-1"}


@pytest.mark.parametrize(("text", "expected"), [
    ("", {}),
    ("# only a comment\n\n   \n", {}),
    ("10.0.0.1 a/b  # trailing comment\n", {"10.0.0.1": "a/b"}),
    ("10.0.0.1\ta/b alias\n", {"10.0.0.1": "a/b"}),
])
def test_comments_blank_lines_and_aliases(text: str, expected: dict[str, str]) -> None:
    assert parse_hosts(text) == expected


@pytest.mark.parametrize(("text", "number"), [
    ("10.0.0.1 a/b\nnot-an-ip name\n", 2),
    ("10.0.0.1\n", 1),
    ("# c\n\n10.0.0.300 x\n", 3),
])
def test_a_line_that_is_not_an_entry_is_named_by_its_number(text: str, number: int) -> None:
    with pytest.raises(HostsFormatError) as err:
        parse_hosts(text)
    assert err.value.number == number
    assert str(err.value).startswith(f"line {number}, is not a hosts entry (`IP NAME`): ")
