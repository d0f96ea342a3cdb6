"""What a predictor's setup()/run() call: load once, then check → generate → encode → metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cogvx import checks
from cogvx.cogvideox.generate import STEPS_RANGE, STRENGTH_RANGE, Request
from cogvx.fast.caps import check_fast_output
from cogvx.fast.models import fast_enhance, fast_missing_message, load_fast_from_env
from cogvx.gpu import release_openmp_pool, releasing_openmp_pool
from cogvx.log import clip
from cogvx.log import log as log_line
from cogvx.models import Variant
from cogvx.parallel import load_video_model
from cogvx.prompting.extend import load_extender_from_env, require
from cogvx.speed.cache import DEFAULT_FAST_MODE, FAST_MODES
from cogvx.video import OUTPUT_FORMATS, save_video
from cogvx.video.write import GIF_MAX_FPS, check_gif_fps

EXTENDED_LOG_CHARS = 1500  # the extension fits 226 T5 tokens (~1000 characters): logged whole
UPSCALES = (1, 2, 4)  # Real-ESRGAN output option (fast path)
# Request ranges and choices, checked here. The predictors' Input(ge=, le=, choices=) repeat
# them as literals (Cog's static schema parser reads only literals);
# tests/test_predictor_inputs.py holds both equal.
RANGES: dict[str, tuple[float, float]] = {
    "num_inference_steps": STEPS_RANGE,
    "guidance_scale": (0.0, 20.0),
    "fps": (1, 60),
    "output_quality": (1, 100),
    "lora_scale": (-1.0, 3.0),
    "strength": STRENGTH_RANGE,
}
CHOICES: dict[str, tuple] = {
    "output_format": OUTPUT_FORMATS,
    "upscale": UPSCALES,
    "fast_mode": FAST_MODES,
}
DEFAULTS = {"fast_mode": DEFAULT_FAST_MODE}
Metric = Callable[[str, Any], None]


class VideoService:
    """One loaded model serving predictions."""

    def __init__(
        self, model: str, weights: str | None = None, log: Callable[[str], None] = log_line
    ):
        self.log = log
        self.model = load_video_model(model, weights, log=log)  # one GPU, or a worker per GPU
        self.fast = load_fast_from_env(log)  # Real-ESRGAN + RIFE output options, if configured
        self.extender = load_extender_from_env(log)  # extend_prompt, if configured
        # coglet runs setup() and each run() on different threads, and libgomp keeps an OpenMP
        # pool per thread: with an idle one alive it thinks the CPUs oversubscribed and puts
        # its threads to sleep after every op of run(). So drop the pool a thread leaves idle
        # (cogvx.gpu.release_openmp_pool; numbers: benchmarks/bench_overhead.py).
        release_openmp_pool()

    @releasing_openmp_pool
    def run(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        num_frames: int | None = None,
        num_inference_steps: int,
        guidance_scale: float,
        use_dynamic_cfg: bool,
        seed: int | None,
        fps: int,
        output_format: str,
        output_quality: int,
        image: str | Path | None = None,
        image_fit: str = "crop",
        video: str | Path | None = None,
        strength: float = 0.8,
        lora_url: str | None = None,
        lora_scale: float = 1.0,
        interpolate: bool = False,
        upscale: int = 1,
        fast_mode: str = DEFAULT_FAST_MODE,
        extend_prompt: bool = False,
        record_metric: Metric | None = None,
    ) -> Path:
        """Generate one video and return the encoded file.

        image: a file for image-to-video; video: a file for video-to-video (T2V models).
        upscale / interpolate: Real-ESRGAN / RIFE x2 on the output (COGVX_FAST_WEIGHTS)."""
        checks.choice("output_format", output_format, CHOICES["output_format"])
        checks.choice("fast_mode", fast_mode, CHOICES["fast_mode"])
        upscale = checks.integer_choice("upscale", upscale, CHOICES["upscale"])
        factor = 2 if interpolate else 1
        post = [n for n, on in (("upscale", upscale > 1), ("interpolate", factor > 1)) if on]
        if post and self.fast is None:
            raise ValueError(fast_missing_message(" and ".join(post)))
        output_quality = _whole("output_quality", output_quality)
        fps = _whole("fps", fps)
        if interpolate:  # RIFE x2 doubles the rate the file plays at
            inputs, fix = f"fps={fps} with interpolate", f"use fps up to {GIF_MAX_FPS // 2}"
        else:
            inputs, fix = f"fps={fps}", f"use fps up to {GIF_MAX_FPS}"
        check_gif_fps(output_format, fps * factor, inputs, fix)
        num_inference_steps = _whole("num_inference_steps", num_inference_steps)
        seed = checks.seed(seed)
        checks.in_range("lora_scale", float(lora_scale), *RANGES["lora_scale"])
        v = self.model.variant
        extender = require(self.extender) if extend_prompt else None  # refused before any work
        frames = None
        if video is not None:
            frames = read_v2v_video(video, v, self.log)
            if num_frames is not None and num_frames != len(frames):
                self.log(f"num_frames={num_frames} ignored: video-to-video keeps the video's count")
        elif num_frames is not None:
            num_frames = checks.integer_choice("num_frames", num_frames, v.allowed_frames)
        req = Request(
            prompt=prompt,
            negative_prompt=checks.plain_text(negative_prompt, "negative_prompt"),
            num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            guidance_scale=float(
                checks.in_range("guidance_scale", guidance_scale, *RANGES["guidance_scale"])
            ),
            use_dynamic_cfg=use_dynamic_cfg,
            seed=seed,
            image=None if image is None else fit_input_image(image, v, image_fit, self.log),
            video=frames,
            strength=float(strength),
            lora_url=(lora_url or "").strip() or None,
            lora_scale=float(lora_scale),
            fast_mode=fast_mode,
        )
        if post:  # refuse an output over the caps before generating
            if frames is not None:
                n, (h, w) = len(frames), frames.shape[1:3]
            else:
                n = num_frames or v.default_frames
                w, h = req.image.size if req.image is not None else (v.width, v.height)
            assert self.fast is not None  # post without fast models was refused above
            check_fast_output(self.fast, n, h, w, upscale, factor, self.log, name="upscale")
        if extender is not None:  # after every input check: the LLM's time is not wasted
            prompt = extender.extend(
                checks.prompt(prompt), self.model.count_tokens, v.max_tokens, v.task == "i2v"
            )
            self.log(f"extended prompt: {clip(prompt, EXTENDED_LOG_CHARS)}")
            req = dataclasses.replace(req, prompt=prompt)
        result = self.model.generate(req)
        out = result.frames
        if post:
            assert self.fast is not None  # post without fast models was refused above
            out = fast_enhance(self.fast, out, upscale, factor, self.log)
            fps *= factor
        return save_video(
            out, stem=f"cogvideox-{result.seed}", fps=fps, fmt=output_format,
            quality=output_quality, log=self.log, record_metric=record_metric,
        )  # fmt: skip


def _whole(name: str, value: object) -> int:
    lo, hi = RANGES[name]
    return checks.integer(name, value, int(lo), int(hi))


def fit_input_image(path: str | Path, v: Variant, fit: str, log: Callable[[str], None]) -> Any:
    """Open an input image and fit it to the size the variant makes for it (see `images`)."""
    from cogvx import images

    checks.choice("image_fit", fit, images.FIT_MODES)
    img = images.load_image(path, log=log)
    if v.min_side and v.max_side:
        w, h = images.derived_size(*img.size, v.min_side, v.max_side, v.size_multiple)
    else:
        w, h = v.width, v.height
    log(f"image: {images.describe_fit(img.size, (w, h), fit)}")
    return images.fit_image(img, w, h, fit)


def read_v2v_video(path: str | Path, v: Variant, log: Callable[[str], None]) -> Any:
    """Frames of an input video at the variant's size, fps and an accepted frame count."""
    from cogvx.cogvideox.v2v import load_video

    return load_video(path, v.width, v.height, v.fps, v.v2v_frames, log=log)
