"""Where the project's shared test data lives: `shared/` beside the repository (as laid for
developers and CI), or ZSNIFF_ZEEK_DATA."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _zeek_data() -> Path:
    explicit = os.environ.get("ZSNIFF_ZEEK_DATA")
    if explicit:
        return Path(explicit)
    for candidate in (_REPO.parent / "shared" / "data" / "zeek",
                      Path("/work/shared/data/zeek")):
        if candidate.exists():
            return candidate
    return _REPO.parent / "shared" / "data" / "zeek"


ZEEK_DATA = _zeek_data()
ZEEK_TRACES = ZEEK_DATA / "traces"
