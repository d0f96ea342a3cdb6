"""Enhance service: a video file -> VEnhancer (diffusion) or the fast path (Real-ESRGAN + RIFE).

One weights tarball holds both (see `WEIGHTS_LAYOUT`). Every input is checked, and the run's
memory estimated against the device, before any model work; the output is encoded without audio.
The fast path (`FastModels`, `fast_enhance`) is also the T2V/I2V output option (cogvx.service).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cogvx import checks
from cogvx.gpu import release_openmp_pool, releasing_openmp_pool
from cogvx.log import bound_library_logs
from cogvx.log import log as log_line
from cogvx.outputs import output_root
from cogvx.video import OUTPUT_FORMATS, VideoInfo, fresh_output_path, probe_video, write_video

Log = Callable[[str], None]
Metric = Callable[[str, Any], None]

MODEL_NAME = "enhance"  # folder name under the weights cache
WEIGHTS_URL: str | None = None  # VEnhancer has no public tarball: COG_WEIGHTS must name one
VENHANCER_DIR = "venhancer"
FAST_DIR = "fast"
UPSCALER_FILES = ("realesrgan.safetensors", "realesrgan.pth")
RIFE_FILES = ("flownet.safetensors", "flownet.pkl")
WEIGHTS_LAYOUT = f"""\
{VENHANCER_DIR}/unet/, {VENHANCER_DIR}/controlnet/   from venhancer_v2.pt (cogvx.venhancer.convert)
{VENHANCER_DIR}/vae/                           stabilityai/stable-video-diffusion-img2vid, vae
{VENHANCER_DIR}/text_encoder/, tokenizer/      stabilityai/stable-diffusion-2-1
{FAST_DIR}/{UPSCALER_FILES[0]}               a Real-ESRGAN model (RealESRGAN_x4plus.pth ...)
{FAST_DIR}/{RIFE_FILES[0]}                  RIFE HDv3 flownet.pkl"""
FAST_WEIGHTS_ENV = "COGVX_FAST_WEIGHTS"  # T2V/I2V images: tarball URL or folder of `fast/`

METHODS = ("venhancer", "fast")
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}
SIZE_POLICIES = ("original", "exact")

MIN_SIDE = 16  # input frames smaller than this on either side are refused
MAX_INPUT_PIXELS = 4096 * 4096  # per input frame (decoding cost), as video-to-video
MAX_INPUT_FRAMES = 300  # e.g. 12.5 s at 24 fps; CogVideoX makes at most 161
MAX_OUTPUT_FRAMES = 640
MAX_FAST_OUTPUT_PIXELS = 4096 * 4096  # per output frame of the fast path
# CPU runs are for tests and tiny models: cap the work so a mistake cannot run for hours.
CPU_MAX_OUTPUT_FRAMES = 97
CPU_MAX_EVAL_PIXELS = 2_000_000  # VEnhancer frame-evaluations x latent pixels
CPU_MAX_FAST_PIXELS = 1920 * 1080  # per output frame of the fast path
HEADROOM_GIB = 1.5  # CUDA context, allocator fragmentation
SMALLER_RUN = (
    "lower up_scale or target_fps, use size_policy=exact, shorten the video, or use method=fast"
)
RIFE_HALF_SCALE_PIXELS = 2560 * 1440  # above this RIFE estimates flow at half resolution (4K)
FAST_BATCH = 4  # frames per Real-ESRGAN pass


class EnhanceSetupError(RuntimeError):
    """The enhance model cannot be set up: missing or misplaced weights."""


class EnhanceMemoryError(RuntimeError):
    """A run would not fit (or did not fit) in the device's memory; names the estimate."""


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
    for depth in range(3):
        roots = [folder] if depth == 0 else sorted(folder.glob("/".join(["*"] * depth)))
        for root in roots:
            if (root / VENHANCER_DIR).is_dir() or (root / FAST_DIR).is_dir():
                return root
    raise EnhanceSetupError(
        f"no enhance weights in {folder}: expected a {VENHANCER_DIR}/ and/or {FAST_DIR}/ folder "
        f"(found {sorted(p.name for p in folder.iterdir())[:10]}). Layout:\n{WEIGHTS_LAYOUT}"
    )


def _first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


# --- fast path ------------------------------------------------------------------------------------


@dataclass
class FastModels:
    """Real-ESRGAN (cogvx.upscale.Upscaler) and RIFE (cogvx.rife.IFNet), loaded."""

    upscaler: Any
    rife: Any

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | None = None) -> FastModels:
        """Load `realesrgan.*` and `flownet.*` from one folder (the tarball's `fast/`)."""
        from cogvx.rife import load_ifnet
        from cogvx.upscale import load_upscaler

        folder = Path(folder)
        up, rife = _first_file(folder, UPSCALER_FILES), _first_file(folder, RIFE_FILES)
        if up is None or rife is None:
            raise EnhanceSetupError(
                f"fast-path folder {folder} needs one of {UPSCALER_FILES} and one of {RIFE_FILES}"
                f"; found {sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []}"
            )
        return cls(load_upscaler(up, device=device), load_ifnet(rife, device=device))

    def describe(self) -> str:
        u, width = self.upscaler, self.rife.width
        return f"Real-ESRGAN {u.architecture} x{u.scale} ({u.dtype}), RIFE HDv3 width {width}"


def load_fast_weights(source: str, log: Log = log_line) -> FastModels:
    """Install a fast-path tarball/folder (its root or `fast/` holding the two files) and load."""
    import importlib.util

    from cogvx.weights import install_weights, weights_cache_root

    missing = [m for m in ("spandrel", "torchvision") if importlib.util.find_spec(m) is None]
    if missing:
        raise EnhanceSetupError(
            f"{FAST_WEIGHTS_ENV} is set, but this image lacks {missing}: add spandrel==0.4.2 and "
            "torchvision==0.29.1 to its requirements (Real-ESRGAN loads through spandrel)"
        )
    folder = Path(install_weights(source, weights_cache_root() / "fast", log=log))
    if (folder / FAST_DIR).is_dir():
        folder = folder / FAST_DIR
    t0 = time.perf_counter()
    models = FastModels.from_folder(folder)
    log(f"fast path: loaded {models.describe()} from {folder} in {time.perf_counter() - t0:.1f}s")
    return models


def load_fast_from_env(log: Log = log_line) -> FastModels | None:
    """The fast-path models COGVX_FAST_WEIGHTS names (tarball URL or folder); None when unset."""
    source = os.environ.get(FAST_WEIGHTS_ENV, "").strip()
    return load_fast_weights(source, log) if source else None


def fast_missing_message(what: str) -> str:
    """Why an output option of the generators is unavailable, and how a deployment enables it."""
    return (
        f"{what} needs the fast-path weights (Real-ESRGAN + RIFE), which this deployment does not "
        f"load: set {FAST_WEIGHTS_ENV} to a tarball URL or folder holding {UPSCALER_FILES[0]} and "
        f"{RIFE_FILES[0]} (see docs/enhance.md), or leave {what} off"
    )


def fast_factor(in_fps: float, target_fps: float) -> int:
    """RIFE's frame factor (a power of two, 1-16) nearest to target_fps / in_fps (ties: lower)."""
    from cogvx.rife import FACTORS

    ratio = target_fps / in_fps
    return min(FACTORS, key=lambda f: (abs(f - ratio), f))


def scaled_size(h: int, w: int, up_scale: float) -> tuple[int, int]:
    """(height, width) x up_scale, rounded to even sides (yuv420p needs them)."""
    return max(2, round(h * up_scale / 2) * 2), max(2, round(w * up_scale / 2) * 2)


def fast_enhance(
    models: FastModels,
    frames: np.ndarray,
    up_scale: float,
    factor: int,
    log: Log = log_line,
) -> np.ndarray:
    """Upscale with Real-ESRGAN (resized to exactly `up_scale`), then RIFE x`factor` in time.

    Upscaling first is the CogVideoX demo's order: RIFE on big frames is far cheaper than
    Real-ESRGAN on the inserted ones.
    """
    from cogvx.rife import interpolate
    from cogvx.upscale import check_uint8_frames, to_uint8, upscale_tensor

    frames = check_uint8_frames(frames)
    t, h, w, _ = frames.shape
    up = models.upscaler
    if up_scale > up.scale:
        raise ValueError(
            f"up_scale={up_scale:g} is not allowed on the fast path: its Real-ESRGAN model "
            f"upscales x{up.scale} at most"
        )
    t0 = time.perf_counter()
    if up_scale != 1:
        oh, ow = scaled_size(h, w, up_scale)
        out = np.empty((t, oh, ow, 3), dtype=np.uint8)
        for i in range(0, t, FAST_BATCH):
            x = torch.from_numpy(frames[i : i + FAST_BATCH]).to(up.device)
            x = x.permute(0, 3, 1, 2).to(up.dtype) / 255.0
            y = upscale_tensor(up, x, up.scale)
            if y.shape[-2:] != (oh, ow):
                y = F.interpolate(y, size=(oh, ow), mode="bicubic", antialias=True)
            out[i : i + FAST_BATCH] = to_uint8(y)
        resized = "" if (oh, ow) == (h * up.scale, w * up.scale) else f", resized to {ow}x{oh}"
        log(
            f"fast: Real-ESRGAN x{up.scale} on {t} frames {w}x{h}{resized} in "
            f"{time.perf_counter() - t0:.1f}s"
        )
        frames = out
    if factor > 1:
        t1 = time.perf_counter()
        oh, ow = frames.shape[1:3]
        scale = 0.5 if oh * ow > RIFE_HALF_SCALE_PIXELS else 1.0
        frames = interpolate(models.rife, frames, factor=factor, scale=scale)
        log(
            f"fast: RIFE x{factor} over {t - 1} frame pairs -> {len(frames)} frames "
            f"(flow scale {scale:g}) in {time.perf_counter() - t1:.1f}s"
        )
    return frames


# --- memory estimate ------------------------------------------------------------------------------
# Working memory of a VEnhancer run beyond its weights, in bytes. Counted from the code's
# buffers and the block layout, not measured on a GPU (none here); stated as estimates in logs.
# Sampling: the UNet's and the ControlNet's 12 skip tensors each (~5.4 x width channels at full
# latent resolution, summed over levels) plus the working tensors of one block: ~15 x width.
SAMPLE_CHANNELS_PER_WIDTH = 15
LATENT_COPIES = 8  # x, noised start, denoised, previous denoised, noise, chunk outputs, hint...
# VAE: full-resolution decoder/encoder tensors carry 2 x the first width (the x2 upsample conv);
# about 4 are alive at once, over the 5 frames of a decode window or one encoded frame.
VAE_CHANNELS_PER_WIDTH = 8


@dataclass(frozen=True)
class WorkingSet:
    """Estimated peak working memory (GiB) of the three phases of a VEnhancer run."""

    encode_gib: float
    sample_gib: float
    decode_gib: float

    @property
    def peak_gib(self) -> float:
        return max(self.encode_gib, self.sample_gib, self.decode_gib)

    def describe(self) -> str:
        return (
            f"~{self.peak_gib:.1f} GiB working memory (estimate: encode {self.encode_gib:.1f}, "
            f"sampling {self.sample_gib:.1f}, decode {self.decode_gib:.1f})"
        )


def venhancer_working_set(
    plan: Any, unet_width: int, vae_width: int, dtype_bytes: int
) -> WorkingSet:
    """Estimate for an arith.Plan; widths are the UNet's and VAE's first block channels."""
    from cogvx.venhancer import arith

    _, frames, lh, lw = plan.latent_shape
    latent_px = lh * lw
    pixels = plan.padded_h * plan.padded_w
    chunk = max(b - a for a, b in plan.chunks)
    latents = LATENT_COPIES * arith.LATENT_CHANNELS * frames * latent_px * 4
    vae_work = VAE_CHANNELS_PER_WIDTH * vae_width * 4
    # encode: every resized, padded input frame in fp32 (list + cat), one frame through the VAE
    encode = 2 * 12 * plan.in_frames * pixels + vae_work * pixels + latents
    sample = SAMPLE_CHANNELS_PER_WIDTH * unet_width * chunk * latent_px * dtype_bytes + latents
    # decode: fp32 output + weights and their uint8 conversion (~3 frame-sized fp32 copies), one
    # tile column of decoded windows twice (pieces + blend), the VAE on one 5-frame tile
    tile_px = min(pixels, arith.DECODE_TILE_H * arith.DECODE_TILE_W * arith.VAE_FACTOR**2)
    decode = (
        3 * 12 * frames * pixels
        + 2 * 12 * frames * tile_px
        + vae_work * arith.DECODE_FRAMES * tile_px
        + latents
    )
    return WorkingSet(encode / 2**30, sample / 2**30, decode / 2**30)


def available_memory_gib(device: torch.device) -> float:
    """Memory a run can still use: free VRAM plus torch's cached blocks, or MemAvailable (CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return (free + cached) / 2**30
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) / 2**30


def frames_gib(frames: int, h: int, w: int, out_frames: int, out_h: int, out_w: int) -> float:
    """Host memory of uint8 input frames and the output (twice: result and encoder feed)."""
    return (frames * h * w + 2 * out_frames * out_h * out_w) * 3 / 2**30


def _frames(gib: float) -> str:
    return f"~{gib:.1f} GiB of frames (input + output)"


def check_ram(need_gib: float, what: str, log: Log = log_line) -> None:
    """Log the need and refuse (EnhanceMemoryError) when RAM has less available."""
    ram = available_memory_gib(torch.device("cpu"))
    log(f"memory: RAM {what}, {ram:.1f} GiB available")
    if need_gib > ram:
        raise EnhanceMemoryError(
            f"this run needs {what} in RAM, but only {ram:.1f} GiB is available: {SMALLER_RUN}"
        )


def check_fast_output(
    models: FastModels,
    frames: int,
    h: int,
    w: int,
    up_scale: float,
    factor: int,
    log: Log,
    name: str = "up_scale",
) -> tuple[int, int, int]:
    """(frames, height, width) of a fast-path output, refused when over the caps or the RAM."""
    up = models.upscaler
    if up_scale > up.scale:
        raise ValueError(
            f"{name}={up_scale:g} is not allowed on the fast path: its Real-ESRGAN model "
            f"upscales x{up.scale} at most"
        )
    oh, ow = scaled_size(h, w, up_scale) if up_scale != 1 else (h, w)
    out_frames = (frames - 1) * factor + 1
    check_output_frames(out_frames, up.device)
    cpu = up.device.type == "cpu"
    cap = CPU_MAX_FAST_PIXELS if cpu else MAX_FAST_OUTPUT_PIXELS
    if oh * ow > cap:
        raise ValueError(
            f"{name}={up_scale:g} makes {ow}x{oh} frames; at most {cap / 1e6:.1f} MP per frame "
            f"are made{' on CPU' if cpu else ''}: lower {name}"
        )
    need = frames_gib(frames, h, w, out_frames, oh, ow)
    check_ram(need, _frames(need), log)
    return out_frames, oh, ow


# --- request checks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One enhancement, checked."""

    method: str
    prompt: str
    up_scale: float
    target_fps: float | None
    size_policy: str
    noise_aug: int
    solver_mode: str
    steps: int
    guidance_scale: float
    chunk_overlap: int
    precision: str
    seed: int | None
    output_format: str
    output_quality: int


def check_request(req: Request) -> Request:
    """ValueError naming the first input outside what the predictor allows; else the request
    with integer inputs as ints (JSON 2.0 arrives as a float)."""
    from cogvx.venhancer.schedule import SOLVER_MODES

    checks.choice("method", req.method, METHODS)
    checks.in_range("up_scale", req.up_scale, 1.0, 8.0)
    if req.target_fps is not None:
        checks.in_range("target_fps", req.target_fps, 1.0, 240.0)
    checks.choice("size_policy", req.size_policy, SIZE_POLICIES)
    noise_aug = checks.integer("noise_aug", req.noise_aug, 1, 300)
    checks.choice("solver_mode", req.solver_mode, SOLVER_MODES)
    steps = checks.integer("steps", req.steps, 1, 50)
    checks.in_range("guidance_scale", req.guidance_scale, 1.0, 20.0)
    chunk_overlap = checks.integer("chunk_overlap", req.chunk_overlap, 1, 16)
    checks.choice("precision", req.precision, list(PRECISIONS))
    checks.choice("output_format", req.output_format, OUTPUT_FORMATS)
    output_quality = checks.integer("output_quality", req.output_quality, 1, 100)
    seed = checks.seed(req.seed)
    return replace(
        req, noise_aug=noise_aug, steps=steps, chunk_overlap=chunk_overlap,
        output_quality=output_quality, seed=seed,
    )  # fmt: skip


def probe_input(path: str | Path) -> VideoInfo:
    """Probe the input video and refuse sizes and lengths outside the caps."""
    info = probe_video(path)
    name = info.path.name
    if min(info.width, info.height) < MIN_SIDE:
        raise ValueError(
            f"video {name} is {info.width}x{info.height}; both sides must be >= {MIN_SIDE} pixels"
        )
    if info.width * info.height > MAX_INPUT_PIXELS:
        raise ValueError(
            f"video {name} is {info.width}x{info.height}; frames up to "
            f"{MAX_INPUT_PIXELS / 1e6:.0f} MP are accepted: downscale it first"
        )
    if not 0 < info.fps <= 240:
        raise ValueError(f"video {name} states {info.fps:g} fps; 0-240 fps are accepted")
    if info.num_frames < 2:
        raise ValueError(f"video {name} has {info.num_frames} frame; at least 2 are needed")
    if info.num_frames > MAX_INPUT_FRAMES:
        raise ValueError(
            f"video {name} has {info.num_frames} frames ({info.duration:.1f} s at "
            f"{info.fps:.3g} fps); at most {MAX_INPUT_FRAMES} are accepted: trim it first"
        )
    return info


def resolve_target_fps(target_fps: float | None, in_fps: float) -> float:
    """target_fps, or twice the input rate when blank; never below the input rate."""
    if target_fps is None:
        return 2 * in_fps
    if target_fps < in_fps - 1e-6:
        raise ValueError(
            f"target_fps={target_fps:g} is below the input video's {in_fps:.3g} fps; this model "
            f"only adds frames: use target_fps >= {in_fps:.3g} (= keeps the frame rate)"
        )
    return target_fps


def check_output_frames(out_frames: int, device: torch.device) -> None:
    """Refuse outputs longer than the cap (a lower one on CPU)."""
    if out_frames > MAX_OUTPUT_FRAMES:
        raise ValueError(
            f"the output would have {out_frames} frames; at most {MAX_OUTPUT_FRAMES} are made: "
            "lower target_fps or trim the video"
        )
    if device.type == "cpu" and out_frames > CPU_MAX_OUTPUT_FRAMES:
        raise ValueError(
            f"the output would have {out_frames} frames; on CPU at most {CPU_MAX_OUTPUT_FRAMES} "
            "are made (CPU runs are for tests): lower target_fps or trim the video"
        )


def prompt_note(tokenizer: Any, prompt: str) -> str | None:
    """A log line when the prompt plus VEnhancer's quality suffix exceeds 77 CLIP tokens."""
    from cogvx.venhancer import text

    limit = text.MAX_TOKENS
    full = len(tokenizer(text.full_prompt(prompt), truncation=False, verbose=False).input_ids)
    if full <= limit:
        return None
    own = len(tokenizer(prompt.strip(), truncation=False, verbose=False).input_ids)
    if own > limit:
        return (
            f"prompt is {own} CLIP tokens; VEnhancer's text encoder reads {limit} (with start and "
            "end), so the end of the prompt and all of the quality suffix are cut (truncated)"
        )
    return (
        f"prompt + VEnhancer's quality suffix is {full} CLIP tokens; the text encoder reads "
        f"{limit}, so the last {full - limit} tokens of the suffix are cut (truncated)"
    )


def device_dtype(precision: str, device: torch.device) -> torch.dtype:
    """UNet + ControlNet dtype: the chosen precision on GPU, float32 on CPU."""
    return PRECISIONS[precision] if device.type == "cuda" else torch.float32


class ProgressLog:
    """`progress(done, total)` that logs about every 10 % (every step for short runs)."""

    def __init__(self, what: str, log: Log) -> None:
        self.what, self.log, self.last, self.t0 = what, log, -1.0, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if done == total or done / total - self.last >= 0.1:
            self.last = done / total
            self.log(f"{self.what} {done}/{total} ({time.perf_counter() - self.t0:.1f}s)")


# --- service --------------------------------------------------------------------------------------


class EnhanceService:
    """VEnhancer and the fast-path models loaded once, enhancing videos."""

    def __init__(self, weights: str | None = None, log: Log = log_line) -> None:
        from cogvx.weights import install_weights, weights_cache_root

        self.log = log
        source = str(weights) if weights else WEIGHTS_URL
        if not source:
            raise EnhanceSetupError(missing_weights_message())
        folder = Path(install_weights(source, weights_cache_root() / MODEL_NAME, log=log))
        self.root = find_enhance_root(folder)
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
            raise EnhanceSetupError(missing_weights_message())
        bound_library_logs()
        release_openmp_pool()  # run() comes on another thread: see VideoService
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info()
            log(f"device: cuda, {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
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
        req = check_request(req)
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
        fps = resolve_target_fps(req.target_fps, info.fps)
        if method == "venhancer":
            frames, out_fps = self._venhancer(video, info, req, fps)
        else:
            frames, out_fps = self._fast(video, info, req, fps)
        path = fresh_output_path(output_root(), output_format, stem=f"enhanced-{method}")
        t0 = time.perf_counter()
        write_video(frames, path, fps=out_fps, fmt=output_format, quality=req.output_quality)
        duration = len(frames) / out_fps
        h, w = frames.shape[1:3]
        self.log(
            f"wrote {path.name}: {len(frames)} frames {w}x{h}, {duration:.2f}s at {out_fps:g} fps "
            f"(no audio) in {time.perf_counter() - t0:.1f}s"
        )
        if record_metric is not None:
            record_metric("video_output_count", 1)
            record_metric("video_output_duration_seconds", duration)
        return path

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
        what = _frames(frames_need)
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
