"""What a predictor's setup()/run() call: load once, then check → generate → encode → metrics."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cogvx import checks
from cogvx.generate import Request, VideoModel
from cogvx.log import log as log_line
from cogvx.video import OUTPUT_FORMATS, fresh_output_path, write_video

OUTPUT_ENV = "COGVX_OUTPUT_DIR"  # per-prediction output folders live here
Metric = Callable[[str, Any], None]


def output_root() -> Path:
    """Folder for prediction outputs; each prediction replaces the previous one's folder."""
    return Path(os.environ.get(OUTPUT_ENV, "/tmp/cogvx-outputs"))


class VideoService:
    """One loaded model serving predictions."""

    def __init__(
        self, model: str, weights: str | None = None, log: Callable[[str], None] = log_line
    ):
        self.log = log
        self.model = VideoModel.load(model, weights, log=log)

    def run(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        num_frames: int,
        num_inference_steps: int,
        guidance_scale: float,
        use_dynamic_cfg: bool,
        seed: int | None,
        fps: int,
        output_format: str,
        output_quality: int,
        image: Any = None,
        record_metric: Metric | None = None,
    ) -> Path:
        """Generate one video and return the encoded file."""
        checks.choice("output_format", output_format, OUTPUT_FORMATS)
        checks.in_range("output_quality", output_quality, 1, 100)
        checks.in_range("fps", fps, 1, 60)
        req = Request(
            prompt=prompt,
            negative_prompt=(negative_prompt or "").strip(),
            num_frames=num_frames,
            num_inference_steps=int(
                checks.in_range("num_inference_steps", num_inference_steps, 1, 100)
            ),
            guidance_scale=float(checks.in_range("guidance_scale", guidance_scale, 0.0, 20.0)),
            use_dynamic_cfg=use_dynamic_cfg,
            seed=seed,
            image=image,
        )
        result = self.model.generate(req)
        path = fresh_output_path(output_root(), output_format, stem=f"cogvideox-{result.seed}")
        write_video(result.frames, path, fps=fps, fmt=output_format, quality=output_quality)
        duration = len(result.frames) / fps
        self.log(f"wrote {path.name}: {len(result.frames)} frames, {duration:.2f}s at {fps} fps")
        if record_metric is not None:
            record_metric("video_output_count", 1)
            record_metric("video_output_duration_seconds", duration)
        return path
