"""The enhance model (VEnhancer + the fast path), loaded once, enhancing videos."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cogvx import checks
from cogvx.errors import EnhanceMemoryError, EnhanceSetupError, MissingWeightsError
from cogvx.fast.caps import (
    SMALLER_RUN,
    check_fast_output,
    check_output_frames,
    check_ram,
    frames_gib,
    frames_note,
)
from cogvx.fast.models import (
    FAST_DIR,
    RIFE_FILES,
    UPSCALER_FILES,
    FastModels,
    fast_enhance,
    fast_factor,
)
from cogvx.fast.rife import FACTORS
from cogvx.gpu import available_memory_gib, measure_gpu, release_openmp_pool, releasing_openmp_pool
from cogvx.log import bound_library_logs
from cogvx.log import log as log_line
from cogvx.models import get_deployment
from cogvx.services.enhance_request import (
    CPU_MAX_EVAL_PIXELS,
    HEADROOM_GIB,
    PRECISIONS,
    ProgressLog,
    Request,
    check_gif_rate,
    check_request,
    device_dtype,
    probe_input,
    prompt_note,
    resolve_target_fps,
)
from cogvx.venhancer.memory import WorkingSet, venhancer_working_set
from cogvx.video import VideoInfo, save_video
from cogvx.weights import find_weights_root, install_model

Log = Callable[[str], None]
Metric = Callable[[str, Any], None]

DEPLOYMENT = get_deployment("enhance")  # the row of cogvx.models.DEPLOYMENTS
MODEL_NAME = DEPLOYMENT.model  # folder name under the weights cache
WEIGHTS_URL = DEPLOYMENT.weights_url  # None (no public tarball): COG_WEIGHTS must name one
VENHANCER_DIR = "venhancer"

WEIGHTS_LAYOUT = f"""\
{VENHANCER_DIR}/unet/, {VENHANCER_DIR}/controlnet/   from venhancer_v2.pt (cogvx.venhancer.convert)
{VENHANCER_DIR}/vae/                           stabilityai/stable-video-diffusion-img2vid, vae
{VENHANCER_DIR}/text_encoder/, tokenizer/      stabilityai/stable-diffusion-2-1
{FAST_DIR}/{UPSCALER_FILES[0]}               a Real-ESRGAN model (RealESRGAN_x4plus.pth ...)
{FAST_DIR}/{RIFE_FILES[0]}                  RIFE HDv3 flownet.pkl"""


def missing_weights_message() -> str:
    """How to build the enhance tarball, since VEnhancer has no public one."""
    return (
        "the enhance model has no public weight tarball (VEnhancer's checkpoint is only on Hugging "
        "Face as a .pt). Build one and point COG_WEIGHTS at it: download venhancer_v2.pt "
        "(jwhejwhe/VEnhancer), the stabilityai/stable-diffusion-2-1 text_encoder + tokenizer, the "
        "stabilityai/stable-video-diffusion-img2vid vae, RealESRGAN_x4plus.pth and RIFE's "
        "flownet.pkl; run `python tools/build_enhance_weights.py --venhancer venhancer_v2.pt "
        "--sd21 <sd-2-1 folder> --svd <svd folder> --realesrgan RealESRGAN_x4plus.pth --rife "
        "flownet.pkl --out enhance-weights`, then `python tools/pack_weights.py enhance-weights "
        "enhance.tar`, host the tar on any HTTPS server and set COG_WEIGHTS=<its URL> (or "
        "COG_WEIGHTS=<local folder> on the machine itself). Layout:\n" + WEIGHTS_LAYOUT
    )


def find_enhance_root(folder: Path) -> Path:
    """The folder holding `venhancer/` and/or `fast/` (tarballs may wrap it in folders)."""
    return find_weights_root(
        folder,
        lambda root: (root / VENHANCER_DIR).is_dir() or (root / FAST_DIR).is_dir(),
        f"no enhance weights in {folder}: expected a {VENHANCER_DIR}/ and/or {FAST_DIR}/ folder "
        f"(found {sorted(p.name for p in folder.iterdir())[:10]}). Layout:\n{WEIGHTS_LAYOUT}",
        EnhanceSetupError,
    )


class EnhanceService:
    """VEnhancer and the fast-path models loaded once, enhancing videos."""

    def __init__(self, weights: str | None = None, log: Log = log_line) -> None:
        self.log = log
        source = str(weights) if weights else WEIGHTS_URL
        self.root = find_enhance_root(
            install_model(source, MODEL_NAME, missing_weights_message(), log)
        )
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = "fp16"
        self.venhancer: Any = None
        self.fast: FastModels | None = None
        if (self.root / VENHANCER_DIR).is_dir():
            self._load_venhancer(self.precision)
        if (self.root / FAST_DIR).is_dir():
            t0 = time.perf_counter()
            self.fast = FastModels.from_folder(self.root / FAST_DIR, device=str(self.device))
            log(f"loaded {self.fast.describe()} in {time.perf_counter() - t0:.1f}s")
        if self.venhancer is None and self.fast is None:  # pragma: no cover - root check above
            raise MissingWeightsError(missing_weights_message())
        bound_library_logs()
        release_openmp_pool()  # run() comes on another thread: see VideoService
        if self.device.type == "cuda":
            free, total = measure_gpu() or (0.0, 0.0)
            log(f"device: cuda, {free:.1f} GiB free of {total:.1f} GiB")
        else:
            log("device: cpu (float32; for tests and tiny models)")

    def _load_venhancer(self, precision: str) -> None:
        from cogvx.venhancer.pipeline import VEnhancer

        dtype = device_dtype(precision, self.device)
        self.venhancer = None  # free the old copy before loading the new one
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        self.venhancer = VEnhancer.from_folder(self.root / VENHANCER_DIR, self.device, dtype)
        self.precision = precision
        self.log(
            f"loaded VEnhancer ({dtype}) from {self.root / VENHANCER_DIR} in "
            f"{time.perf_counter() - t0:.1f}s"
        )

    def use_precision(self, precision: str) -> None:
        """Reload UNet + ControlNet in another precision (GPU only; CPU is always float32)."""
        checks.choice("precision", precision, list(PRECISIONS))
        if precision == self.precision:
            return
        if self.device.type != "cuda":
            self.log(f"precision={precision} applies on GPU; the CPU runs float32")
            self.precision = precision
            return
        self.log(f"precision {self.precision} -> {precision}: reloading UNet + ControlNet")
        self._load_venhancer(precision)

    @releasing_openmp_pool
    def run(
        self,
        *,
        video: str | Path,
        method: str = "venhancer",
        prompt: str = "",
        up_scale: float = 2.0,
        target_fps: float | None = None,
        size_policy: str = "original",
        noise_aug: int = 200,
        solver_mode: str = "fast",
        steps: int = 15,
        guidance_scale: float = 7.5,
        chunk_overlap: int = 8,
        precision: str = "fp16",
        seed: int | None = None,
        output_format: str = "mp4",
        output_quality: int = 80,
        record_metric: Metric | None = None,
    ) -> Path:
        """Enhance one video file and return the encoded output (no audio)."""
        tfps = None if target_fps is None else float(target_fps)
        req = Request(
            method, prompt or "", float(up_scale), tfps, size_policy, noise_aug, solver_mode,
            steps, float(guidance_scale), chunk_overlap, precision, seed, output_format,
            output_quality,
        )  # fmt: skip
        req = check_request(req, self.log)
        if method == "venhancer" and self.venhancer is None:
            raise ValueError(
                f"method=venhancer is not available: the weights hold no {VENHANCER_DIR}/ "
                "folder; use method=fast"
            )
        if method == "fast" and self.fast is None:
            raise ValueError(
                f"method=fast is not available: the weights hold no {FAST_DIR}/ folder; "
                "use method=venhancer"
            )
        info = probe_input(video)
        fps = resolve_target_fps(req.target_fps, info.fps, req.output_format, self.log)
        if method == "venhancer":
            frames, out_fps = self._venhancer(video, info, req, fps)
        else:
            frames, out_fps = self._fast(video, info, req, fps)
        return save_video(
            frames, stem=f"enhanced-{method}", fps=out_fps, fmt=output_format,
            quality=req.output_quality, log=self.log, record_metric=record_metric,
        )  # fmt: skip

    def _read(self, video: str | Path, info: VideoInfo) -> np.ndarray:
        from cogvx.video import read_frames

        t0 = time.perf_counter()
        frames = read_frames(video, range(info.num_frames), info=info)
        self.log(
            f"read {len(frames)} frames of {info.path.name} ({info.codec} {info.width}x"
            f"{info.height}, {info.fps:.3g} fps) in {time.perf_counter() - t0:.2f}s; audio, if "
            "any, is dropped"
        )
        return frames

    def _check_memory(self, work: WorkingSet, frames_need: float) -> None:
        """Refuse a run whose working memory (estimate) or frames exceed what is free."""
        what = frames_note(frames_need)
        if self.device.type != "cuda":
            check_ram(work.peak_gib + frames_need, f"{work.describe()} + {what}", self.log)
            return
        gpu = available_memory_gib(self.device)
        self.log(f"memory: GPU {work.describe()}, {gpu:.1f} GiB available")
        if work.peak_gib + HEADROOM_GIB > gpu:
            raise EnhanceMemoryError(
                f"this run needs {work.describe()} on the GPU, but only {gpu:.1f} GiB is "
                f"available (+{HEADROOM_GIB} GiB headroom kept): {SMALLER_RUN}"
            )
        check_ram(frames_need, what, self.log)

    def _venhancer(
        self, video: str | Path, info: VideoInfo, req: Request, target_fps: float
    ) -> tuple[np.ndarray, float]:
        from cogvx.venhancer import arith
        from cogvx.venhancer.cost import run_cost
        from cogvx.venhancer.unet import check_latent_size

        plan = arith.make_plan(
            info.num_frames, info.fps, info.height, info.width, req.up_scale, target_fps,
            req.chunk_overlap, req.size_policy,
        )  # fmt: skip
        check_gif_rate(req, info.fps, plan.out_fps, range(1, arith.MAX_INTERP + 2))
        check_latent_size(*plan.latent_shape[2:])
        check_output_frames(plan.out_frames, self.device)
        if plan.out_fps < target_fps - 1e-6:
            self.log(
                f"target_fps={target_fps:g}: VEnhancer inserts at most {arith.MAX_INTERP} frames "
                f"per input frame, so the output runs at {plan.out_fps:g} fps"
            )
        elif abs(plan.out_fps - target_fps) > 1e-6:
            self.log(
                f"target_fps={target_fps:g}: VEnhancer inserts whole frames "
                f"(round({target_fps:g}/{info.fps:.3g}) - 1 = {plan.interp}), so the output runs "
                f"at {plan.out_fps:g} fps"
            )
        exact = arith.exact_resolution(info.height, info.width, req.up_scale)
        if req.size_policy == "original" and (plan.target_h, plan.target_w) != exact:
            self.log(
                f"up_scale={req.up_scale:g} -> {plan.target_w}x{plan.target_h}: size_policy="
                "original keeps every output between 1.5x 720p and 1152x2048 in area"
            )
        cost = run_cost(plan, req.solver_mode, req.steps, req.guidance_scale)
        eval_px = cost.frame_evaluations * cost.latent_h * cost.latent_w
        if self.device.type == "cpu" and eval_px > CPU_MAX_EVAL_PIXELS:
            raise ValueError(
                f"this run is {cost.describe()} ({eval_px} frame-evaluation pixels); on CPU at "
                f"most {CPU_MAX_EVAL_PIXELS} are run (CPU runs are for tests): use "
                "size_policy=exact, fewer steps, guidance_scale=1 or a shorter video"
            )
        self.use_precision(req.precision)
        ve = self.venhancer
        dtype_bytes = torch.finfo(ve.dtype).bits // 8
        work = venhancer_working_set(
            plan,
            ve.model.unet.config.block_out_channels[0],
            ve.vae.config.block_out_channels[0],
            dtype_bytes,
        )
        self._check_memory(work, _frames_gib(info, plan.out_frames, plan.target_h, plan.target_w))
        note = prompt_note(ve.tokenizer, req.prompt)
        if note:
            self.log(note)
        if req.solver_mode == "fast" and req.steps != 15:
            self.log(f"solver_mode=fast always runs 14 steps; steps={req.steps} is unused")
        frames = self._read(video, info)
        seed = _seed(req.seed, self.log)
        try:
            out = ve.enhance(
                frames, info.fps, prompt=req.prompt, up_scale=req.up_scale, target_fps=target_fps,
                noise_aug=req.noise_aug, solver_mode=req.solver_mode, steps=req.steps,
                guidance_scale=req.guidance_scale, seed=seed, chunk_overlap=req.chunk_overlap,
                size_policy=req.size_policy, log=self.log,
                progress=ProgressLog("VEnhancer: step", self.log),
            )  # fmt: skip
        except torch.OutOfMemoryError as exc:
            del frames
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise EnhanceMemoryError(
                f"the GPU ran out of memory ({work.describe()}): lower up_scale or target_fps, "
                f"use size_policy=exact or a shorter video, or method=fast ({exc})"
            ) from exc
        return out.frames, out.fps

    def _fast(
        self, video: str | Path, info: VideoInfo, req: Request, target_fps: float
    ) -> tuple[np.ndarray, float]:
        assert self.fast is not None
        factor = fast_factor(info.fps, target_fps)
        out_fps = info.fps * factor
        check_gif_rate(req, info.fps, out_fps, FACTORS)
        if abs(out_fps - target_fps) > 1e-6:
            self.log(
                f"target_fps={target_fps:g}: RIFE multiplies the frame rate by 1, 2, 4, 8 or 16; "
                f"x{factor} gives {out_fps:.4g} fps"
            )
        out_frames, oh, ow = check_fast_output(
            self.fast, info.num_frames, info.height, info.width, req.up_scale, factor, self.log
        )
        ignored = [
            n for n, v, d in [
                ("prompt", req.prompt, ""), ("size_policy", req.size_policy, "original"),
                ("noise_aug", req.noise_aug, 200), ("solver_mode", req.solver_mode, "fast"),
                ("steps", req.steps, 15), ("guidance_scale", req.guidance_scale, 7.5),
                ("chunk_overlap", req.chunk_overlap, 8), ("seed", req.seed, None),
            ] if v != d
        ]  # fmt: skip
        if ignored:
            self.log(f"method=fast is deterministic and prompt-free: {ignored} unused")
        self.log(
            f"fast: {info.num_frames} frames {info.width}x{info.height} @ {info.fps:.3g} fps -> "
            f"{out_frames} frames {ow}x{oh} @ {out_fps:.4g} fps (Real-ESRGAN x"
            f"{self.fast.upscaler.scale}{'' if req.up_scale != 1 else ' skipped'}, RIFE x{factor})"
        )
        frames = self._read(video, info)
        return fast_enhance(self.fast, frames, req.up_scale, factor, self.log), out_fps


def _frames_gib(info: VideoInfo, out_frames: int, out_h: int, out_w: int) -> float:
    return frames_gib(info.num_frames, info.height, info.width, out_frames, out_h, out_w)


def _seed(seed: int | None, log: Log) -> int:
    from cogvx.gpu import resolve_seed

    return resolve_seed(seed, log)
