"""The one output path of every model: a fresh per-prediction file, encoded, logged, measured."""

from __future__ import annotations

import os
import re
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cogvx import settings
from cogvx.video.write import write_video

Log = Callable[[str], None]
Metric = Callable[[str, Any], None]

OUTPUT_FOLDER = re.compile(r"cogvx-([0-9a-f]{12})")  # a per-prediction folder: cogvx-<uid>


def _remove_own_output(folder: Path) -> None:
    """Delete a folder `fresh_output_path` made and the output files in it, nothing else.

    Files are recognised by name (`<stem>-<uid>.<ext>`); anything else keeps the folder."""
    match = OUTPUT_FOLDER.fullmatch(folder.name)
    try:
        if not match or not stat.S_ISDIR(os.lstat(folder).st_mode):  # never through a symlink
            return
        ours = re.compile(rf"[^/]+-{match.group(1)}\.[a-z0-9]+")
        for entry in os.scandir(folder):
            if ours.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        os.rmdir(folder)  # fails, leaving it, if anything else is inside
    except OSError:
        pass


def fresh_output_path(root: str | Path, fmt: str, stem: str = "video") -> Path:
    """A new per-prediction folder under `root` and a unique file name in it.

    The folders earlier calls made (cogvx-<uid>) are deleted with their outputs; nothing else in
    `root` is touched, so it may be a folder that holds other files."""
    root = Path(root)
    if root.is_dir():
        for old in root.iterdir():
            _remove_own_output(old)
    uid = uuid.uuid4().hex[:12]
    folder = root / f"cogvx-{uid}"
    folder.mkdir(parents=True)
    return folder / f"{stem}-{uid}.{fmt}"


def save_video(
    frames: np.ndarray,
    *,
    stem: str,
    fps: float,
    fmt: str,
    quality: int,
    log: Log,
    record_metric: Metric | None = None,
) -> Path:
    """Encode `frames` into a fresh file under COGVX_OUTPUT_DIR; log it and record the metrics.

    Metrics (Cog's `record_metric`): `video_output_count` (1) and `video_output_duration_seconds`.
    """
    path = fresh_output_path(settings.output_root(), fmt, stem=stem)
    t0 = time.perf_counter()
    write_video(frames, path, fps=fps, fmt=fmt, quality=quality)
    duration = len(frames) / fps
    h, w = frames.shape[1:3]
    log(
        f"wrote {path.name}: {len(frames)} frames {w}x{h}, {duration:.2f}s at {fps:g} fps "
        f"(no audio) in {time.perf_counter() - t0:.1f}s"
    )
    if record_metric is not None:
        record_metric("video_output_count", 1)
        record_metric("video_output_duration_seconds", duration)
    return path
