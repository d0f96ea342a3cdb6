"""The frozen reference of the original CogVLM2 demo's reader (decord) on committed clips.

Recorded once by tests/data/video_read/make_reference.py; see that folder's README.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data" / "video_read"
REFERENCE: dict[str, dict] = json.loads((DATA / "reference.json").read_text())["clips"]


@cache
def reference_arrays() -> dict[str, np.ndarray]:
    """decord's timestamps ((N, 2) float32 start/end) and frames, keyed '<clip>/<what>'."""
    with np.load(DATA / "reference.npz") as data:
        return {k: data[k] for k in data.files}


def reference_frames(name: str, idx: list[int]) -> np.ndarray:
    """The frames decord returned for `idx` of clip `name` (each index's frame is stored once)."""
    arrays = reference_arrays()
    where = {int(i): k for k, i in enumerate(arrays[f"{name}/frame_index"])}
    return arrays[f"{name}/frames"][[where[i] for i in idx]]


def demo_frames(name: str, strategy: str) -> tuple[list[int], np.ndarray]:
    """The indices the demo's rule picked for `strategy` and the frames decord returned."""
    idx = REFERENCE[name]["indices"][strategy]
    return idx, reference_frames(name, idx)
