"""GPU-memory policy (offload mode from free VRAM), dtype choice and seeding."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cogvx import checks, settings
from cogvx.log import log as log_line
from cogvx.models import MemoryNeed
from cogvx.settings import OFFLOAD_ENV

HEADROOM_GB = 1.5  # CUDA context, allocator fragmentation, the encoder's output tensors
OFFLOAD_MODES = ("none", "model", "sequential")


@dataclass(frozen=True)
class MemoryPlan:
    """What to do with a pipeline before the first run, and why."""

    device: str  # "cuda" | "cpu"
    offload: str  # "none" | "model" | "sequential" | "cpu"
    vae_tiling: bool
    vae_slicing: bool
    reason: str


def plan_memory(
    need: MemoryNeed,
    free_gb: float | None,
    total_gb: float | None = None,
    forced: str | None = None,
) -> MemoryPlan:
    """Pick the cheapest offload mode that fits `free_gb` of VRAM (None means no GPU).

    Pure function: the caller measures the card. Offload and `.to("cuda")` are exclusive.
    """
    if forced and forced not in OFFLOAD_MODES:  # checked with or without a GPU
        raise ValueError(f"{OFFLOAD_ENV}={forced!r} is not allowed; use one of {OFFLOAD_MODES}")
    if free_gb is None:
        why = f" ({OFFLOAD_ENV}={forced} applies on a GPU only)" if forced else ""
        return MemoryPlan("cpu", "cpu", False, False, f"no CUDA device: running on CPU{why}")
    card = f"{free_gb:.1f} GiB free" + (f" of {total_gb:.1f} GiB" if total_gb else "")
    if forced:
        return MemoryPlan("cuda", forced, True, True, f"{card}; offload forced by {OFFLOAD_ENV}")
    steps = [
        ("none", need.no_offload),
        ("model", need.model_offload),
        ("sequential", need.sequential_offload),
    ]
    for mode, gb in steps:
        if free_gb >= gb + HEADROOM_GB:
            return MemoryPlan(
                "cuda",
                mode,
                True,
                True,
                f"{card}; needs ~{gb:.1f} GiB with offload={mode} ({need.describe()})",
            )
    raise RuntimeError(
        f"GPU has {card}; this model needs at least ~{need.sequential_offload + HEADROOM_GB:.1f}"
        " GiB even with sequential CPU offload"
    )


def available_memory_gib(device: torch.device) -> float:
    """Memory a run can still use: free VRAM plus torch's cached blocks, or MemAvailable (CPU).

    The one memory measurement: the setup-time plans (`measure_gpu`, the caption plan) and the
    per-request checks of enhancement and the fast path all read it.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return (free + cached) / 2**30
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) / 2**30


def measure_gpu() -> tuple[float, float] | None:
    """(available_gib, total_gib) of the current CUDA device, or None without one."""
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    return available_memory_gib(device), total / 2**30


def current_plan(need: MemoryNeed) -> MemoryPlan:
    """Measure the card and plan; honours the COGVX_OFFLOAD override."""
    free_gb, total_gb = measure_gpu() or (None, None)
    return plan_memory(need, free_gb, total_gb, forced=settings.offload_mode())


def apply_plan(pipe: Any, plan: MemoryPlan, log: Callable[[str], None] = log_line) -> None:
    """Place a diffusers pipeline according to `plan` (never .to('cuda') and offload together)."""
    if plan.offload == "cpu":
        pipe.to("cpu")
    elif plan.offload == "none":
        pipe.to("cuda")
    elif plan.offload == "model":  # on the current card (a multi-GPU rank's own)
        pipe.enable_model_cpu_offload(gpu_id=torch.cuda.current_device())
    elif plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(gpu_id=torch.cuda.current_device())
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if plan.vae_tiling:
            vae.enable_tiling()
        if plan.vae_slicing:
            vae.enable_slicing()
    log(
        f"memory plan: device={plan.device} offload={plan.offload} vae_tiling={plan.vae_tiling} "
        f"vae_slicing={plan.vae_slicing} ({plan.reason})"
    )


def torch_dtype(name: str, device: str) -> torch.dtype:
    """The model's dtype on GPU; float32 on CPU (bf16/fp16 kernels there are slow or missing)."""
    if device == "cpu":
        return torch.float32
    return getattr(torch, name)


def resolve_seed(seed: int | None, log: Callable[[str], None] = log_line) -> int:
    """Use the given seed (checked: 0..2^32-1) or draw one; always log it to reproduce a run."""
    seed = checks.seed(seed)
    if seed is None:
        seed = secrets.randbelow(2**31)
    log(f"seed: {seed}")
    return seed


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator: the same seed gives the same noise whatever the offload mode."""
    return torch.Generator("cpu").manual_seed(seed)


def release_openmp_pool() -> bool:
    """Free the calling thread's idle OpenMP (libgomp) worker threads; False if no libgomp.

    libgomp keeps one thread pool per thread that ran a parallel op and counts the idle ones:
    once that count exceeds the cores it stops spinning between ops and puts its threads to
    sleep after every one (a futex wake per op). Call it at the end of setup(), on the thread
    that ran setup, and at the end of each prediction (coglet runs each on whichever of its
    tokio worker threads is free): then the thread running a prediction holds the only pool, as
    in a plain script. Every loaded copy is released (torch and sentencepiece bundle their own).
    """
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/libgomp" in line})
    except OSError:  # not Linux
        return False
    released = False
    for path in paths:
        try:  # the library is loaded already: CDLL returns that copy
            released |= ctypes.CDLL(path).omp_pause_resource_all(1) == 0  # omp_pause_soft
        except (OSError, AttributeError):  # a libgomp older than OpenMP 5.0
            pass
    return released


def releasing_openmp_pool(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: `release_openmp_pool()` on the calling thread when `fn` returns or raises."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            release_openmp_pool()

    return wrapper
