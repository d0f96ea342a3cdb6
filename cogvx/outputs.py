"""Where prediction outputs go: one folder, set by COGVX_OUTPUT_DIR (a leaf: no cogvx imports)."""

from __future__ import annotations

import os
from pathlib import Path

OUTPUT_ENV = "COGVX_OUTPUT_DIR"  # per-prediction output folders live here


def output_root() -> Path:
    """Folder for prediction outputs; each prediction replaces the previous one's folder."""
    return Path(os.environ.get(OUTPUT_ENV, "/tmp/cogvx-outputs"))
