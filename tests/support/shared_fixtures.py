"""Where the golden fixtures live: ../shared/fixtures beside the checkout (as in CI)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = [
    Path(os.environ["COGVX_FIXTURES"]) if os.environ.get("COGVX_FIXTURES") else None,
    REPO.parent / "shared" / "fixtures",
    REPO / "shared" / "fixtures",
    Path("/work/shared/fixtures"),
]


def fixture_dir(name: str) -> Path:
    """The named fixture folder; fails loudly (never skips) when the fixtures are missing."""
    for root in CANDIDATES:
        if root is not None and (root / name).is_dir():
            return root / name
    looked = [str(c) for c in CANDIDATES if c is not None]
    raise FileNotFoundError(f"fixture folder {name!r} not found; looked in {looked}")
