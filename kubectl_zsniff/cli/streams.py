"""The process's own streams, reached for here alone and handed to the core."""

from __future__ import annotations

import sys
from typing import BinaryIO

from kubectl_zsniff.errors import ExitStatus, ZsniffError


def standard_output() -> BinaryIO:
    """The binary standard output, or the project's error when the process has none.

    Started with stdout closed (`>&-`), Python sets sys.stdout to None; descriptor 1 may then be
    reused by any file or socket opened later, so nothing may be written "to fd 1" either.
    """
    if sys.stdout is None or getattr(sys.stdout, "buffer", None) is None:
        raise ZsniffError(
            "standard output is closed: there is nowhere to write the capture",
            "write a file with -w FILE, or give the output a reader: -w - | tshark -r -",
            ExitStatus.OUTPUT_ERROR,
        )
    return sys.stdout.buffer
