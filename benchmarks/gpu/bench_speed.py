"""GPU speed of the CogVideoX transformer per setting, full size, random weights (no download).

    python -m benchmarks.gpu.bench_speed [--models t2v-5b,t2v-1.5] [--budget 540 | --deadline T]
        [--settings [MODEL=]eager,fp8,...] [--steps [MODEL=]N] [--fast-steps [MODEL=]N]
    python -m benchmarks.gpu.bench_speed --tiny      # CPU smoke run of the same code (tests)

Builds each model from the released configs (`cogvx.cogvideox.released`) with random bf16
weights on the card: 5b at 49 x 480 x 720, 1.5 at 81 x 768 x 1360, guidance 6 with dynamic CFG,
THUDM's DPM scheduler, random prompt embeddings (T5 costs ~0.1 s and is left out). Pictures are
noise: this measures time and memory, not quality.

Settings (`--settings`, per model with MODEL=...; default all), in this order:
  eager            bf16 eager
  cudnn, flash     torch SDPA's cuDNN / flash kernel through diffusers' dispatcher, on bf16 eager
                   (side rows, undone after: what attention alone would gain)
  attention        + the attention backend setup() picks (`cogvx.speed.select`); its `native`
                   (torch SDPA's own pick) is eager's very call and is not re-timed
  compile          + regional compile
  fp8              + fp8 (torchao, cards >= 8.9)
  balanced, fast   + that fast_mode, on top of everything above
The levers are cumulative: one left out still applies, untimed, when a later chosen row needs it,
so `eager,fp8,balanced` times bf16 eager, then attention + compile + fp8, then balanced on top.

A row with fast_mode off runs 1 + --steps steps and takes the median of all but the first (the
first compiles). A fast_mode row runs one whole schedule (its skipping depends on the schedule)
of --fast-steps steps (default 50; shorter when the deadline needs it, down to MIN_FAST_STEPS)
and takes the mean step after leaving out the seconds torch spent compiling during it (dynamo's
compile callbacks): the steady state a request sees after setup()'s warm-up. Est. end-to-end
seconds = 50 x s/step + the VAE decode, measured once per model as its own row, of the latent
frames the pipeline decodes (1.5's padding frame dropped, as diffusers does). Peak GPU memory is
per row: its denoising run alone; the decode row has its own. Ratios to bf16 eager and each
model's best estimate against its goal (5b 45 s, 1.5 200 s) come last.

Deadline: --deadline (Unix time; benchmarks/gpu/on_device.sh passes the end of its time limit)
and/or --budget (seconds from now). A row starts only if its expected time ends before it: its
steps x the s/step this model measured last (x how the setting compared to that row on an
earlier model), plus a compile (the longest measured so far) when the row compiles, plus 15 %;
otherwise it is a `skipped` row. A setting that fails is a `failed` row (undone; the run goes on).
Each row prints as measured and `--out` appends it as JSON, so a time limit that cuts the run
short still leaves the rows so far.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from cogvx.models import get_variant, scheduler_config

E2E_STEPS = 50
SHAPES = {"t2v-5b": (49, 480, 720), "t2v-1.5": (81, 768, 1360)}
GOALS = {"t2v-5b": 45.0, "t2v-1.5": 200.0}  # end-to-end seconds (README, Benchmarks)
SETTINGS = ("eager", "cudnn", "flash", "attention", "compile", "fp8", "balanced", "fast")
LEVERS = ("attention", "compile", "fp8", "balanced", "fast")  # cumulative, in this order
KERNELS = {"cudnn": "_native_cudnn", "flash": "_native_flash"}
FAST_MODES = ("balanced", "fast")
# Shorter schedules reuse a little less (tiny model, balanced: 46 % of attention at 50 steps,
# 45 % at 20 and 30, 40 % at 10 and 16), so their mean step is a little slow
MIN_FAST_STEPS = 10
# Only to size a model's rows before it has measured one: bf16 s/step from THUDM's H100 figures
# (~90 s and ~550 s for 50 steps), scaled by this card's bf16 eager on an earlier model
PRIOR_S_STEP = {"t2v-5b": 1.8, "t2v-1.5": 11.0}
PRIOR_COMPILE_S = 60.0  # a compile, until one is measured
ROW_OVERHEAD_S = 3.0  # per row besides its steps: set-up, syncs, the fp8 row's weight copy
MARGIN = 1.15


def build(model: str, device: str, tiny: bool) -> Any:
    """The pipeline at full size with random weights (tiny: the test models) on `device`."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    from cogvx.cogvideox.released import transformer_config, vae_config

    v = get_variant(model)
    if tiny:
        from cogvx.dev.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(model)
        pipe.scheduler = CogVideoXDPMScheduler(**scheduler_config(v))
        return pipe
    torch.manual_seed(0)
    with torch.device(device):
        dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            transformer = CogVideoXTransformer3DModel(**transformer_config(model)).eval()
            vae = AutoencoderKLCogVideoX(**vae_config(model)).eval()
        finally:
            torch.set_default_dtype(dtype)
    vae.enable_tiling()
    return CogVideoXPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
        scheduler=CogVideoXDPMScheduler(**scheduler_config(v)),
    )  # fmt: skip


class StepClock:
    """Wall time of every denoising step (the pipeline's step-end callback), and how many of
    the steps compiled something (with a CompileClock)."""

    def __init__(self, cuda: bool, compiles: CompileClock | None = None):
        self.cuda, self.last, self.compiles = cuda, 0.0, compiles
        self.times: list[float] = []
        self.compiling, self.compiled = 0, 0.0

    def start(self) -> None:
        self.sync()
        self.times, self.last = [], time.perf_counter()
        self.compiling, self.compiled = 0, self.compiles.total if self.compiles else 0.0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, _pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
        self.sync()
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        if self.compiles and self.compiles.total > self.compiled:
            self.compiling, self.compiled = self.compiling + 1, self.compiles.total
        return kwargs


class CompileClock:
    """Seconds torch has spent compiling in this process, from dynamo's compile start / end
    callbacks (nested compiles are one span), so a row can leave them out of its steps."""

    def __init__(self) -> None:
        self.total = 0.0
        self.began: float | None = None

    def arm(self) -> None:
        """Register the callbacks unless they are: torch._dynamo.reset() clears them."""
        try:
            from torch._dynamo.callback import callback_handler

            if self.begin not in callback_handler.start_callbacks:
                callback_handler.register_start_callback(self.begin)
                callback_handler.register_end_callback(self.end)
        except (ImportError, AttributeError):  # a torch without them: compiles are step time
            pass

    def begin(self, *_args: object) -> None:
        self.began = time.perf_counter()

    def end(self, *_args: object) -> None:
        if self.began is not None:
            self.total += time.perf_counter() - self.began
            self.began = None


_COMPILES: list[CompileClock] = []


def compile_clock() -> CompileClock:
    """The process's one CompileClock."""
    if not _COMPILES:
        _COMPILES.append(CompileClock())
    return _COMPILES[0]


class Forecast:
    """A row's expected seconds from what this run has measured, against the deadline."""

    def __init__(self, deadline: float, clock: Callable[[], float] = time.monotonic):
        self.deadline = deadline  # on `clock`'s scale (time.monotonic())
        self.clock = clock
        self.s_step: dict[tuple[str, str], float] = {}  # (model, setting) -> measured s/step
        self.last: dict[str, str] = {}  # model -> its cumulative fast_mode=off row measured last
        self.compile_s = 0.0  # the longest compile measured
        self.decode_rate: float | None = None  # decode seconds per frame x height x width

    def saw(self, model: str, setting: str, s_step: float, compile_s: float, base: bool) -> None:
        """A measured row; `base`: the cumulative row later rows of this model start from (not
        a side row, not a fast_mode row)."""
        self.s_step[(model, setting)] = s_step
        if base:
            self.last[model] = setting
        self.compile_s = max(self.compile_s, compile_s)

    def step(self, model: str, setting: str) -> float:
        """Expected s/step of `setting`: the model's last measured row, times how `setting`
        compared to that row on an earlier model; before any row, the prior for bf16 eager
        scaled by how this card did against its prior on an earlier model."""
        base = self.last.get(model)
        if base is None:
            prior = PRIOR_S_STEP.get(model, max(PRIOR_S_STEP.values()))
            for (other, name), seconds in self.s_step.items():
                if name == "bf16 eager" and other in PRIOR_S_STEP:
                    return prior * seconds / PRIOR_S_STEP[other]
            return prior
        guess = self.s_step[(model, base)]
        for (other, name), seconds in self.s_step.items():
            if other != model and name == setting and self.s_step.get((other, base)):
                return guess * seconds / self.s_step[(other, base)]
        return guess

    def seconds(self, model: str, setting: str, steps: int, compiles: bool) -> float:
        compile_s = (self.compile_s or PRIOR_COMPILE_S) if compiles else 0.0
        return ROW_OVERHEAD_S + steps * self.step(model, setting) + compile_s

    def left(self) -> float:
        return self.deadline - self.clock()

    def fits(self, seconds: float) -> bool:
        return MARGIN * seconds <= self.left()

    def schedule(self, model: str, setting: str, cap: int, compiles: bool) -> int:
        """The longest schedule of at most `cap` steps that ends before the deadline; 0 when
        not even min(cap, MIN_FAST_STEPS) does."""
        fixed = self.seconds(model, setting, 0, compiles)
        steps = int((self.left() / MARGIN - fixed) / max(self.step(model, setting), 1e-6))
        steps = min(cap, steps)
        return steps if steps >= min(cap, MIN_FAST_STEPS) else 0

    def decoded(self, seconds: float, pixels: int) -> None:
        self.decode_rate = seconds / pixels

    def decode(self, pixels: int) -> float:
        """Expected decode seconds (from an earlier model's, by size; 0 before any)."""
        return (self.decode_rate or 0.0) * pixels


def denoise(pipe: Any, shape: tuple[int, int, int], steps: int, clock: StepClock) -> Any:
    """One run from fixed random prompt embeddings; latents out."""
    frames, h, w = shape
    cfg = pipe.transformer.config
    g = torch.Generator("cpu").manual_seed(1)
    place = {"device": pipe._execution_device, "dtype": pipe.transformer.dtype}
    emb = torch.randn(1, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g).to(**place)
    neg = torch.randn(1, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g).to(**place)
    clock.start()
    with torch.inference_mode():
        return pipe(
            prompt_embeds=emb, negative_prompt_embeds=neg, num_frames=frames, height=h, width=w,
            num_inference_steps=steps, guidance_scale=6.0, use_dynamic_cfg=True,
            generator=torch.Generator("cpu").manual_seed(2), output_type="latent",
            callback_on_step_end=clock,
        ).frames  # fmt: skip


def decoded_latents(pipe: Any, latents: Any, frames: int) -> Any:
    """The latent frames the pipeline would decode for `frames` output frames: 1.5 pads the
    latents at the front to a multiple of its temporal patch, and diffusers drops the padding
    before decoding (only for non-latent output, so a latent run still has it)."""
    wanted = (frames - 1) // pipe.vae_scale_factor_temporal + 1
    return latents[:, latents.shape[1] - wanted :]


def decode_seconds(pipe: Any, latents: Any, cuda: bool) -> float:
    """VAE decode of one run's latents (tiled), once per model."""
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        pipe.decode_latents(latents)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _failure(exc: BaseException) -> str:
    """One line for a table cell: the exception's type and the start of its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}"


def per_model(values: list[str] | None, model: str, default: str) -> str:
    """A repeatable `VALUE` / `MODEL=VALUE` option for `model`: its own value, else the plain
    one, else `default` (the last given wins)."""
    own = plain = None
    for value in values or []:
        key, sep, rest = value.partition("=")
        if sep and key == model:
            own = rest
        elif not sep:
            plain = value
    return own if own is not None else plain if plain is not None else default


def settings_of(args: argparse.Namespace, model: str) -> list[str]:
    value = per_model(args.settings, model, ",".join(SETTINGS))
    return [name.strip() for name in value.split(",") if name.strip()]


def bench_model(
    model: str, args: argparse.Namespace, forecast: Forecast, compiles: CompileClock
) -> list[dict]:
    """Every chosen setting's row for one model (cumulative settings).

    A setting that fails (a kernel this card or torch refuses, out of memory) becomes a `failed`
    row and the run goes on without it, so one bad lever cannot cost the device time of the
    rest; each row is printed as soon as it is measured (`--out` also writes it as JSON)."""
    from cogvx.errors import SetupError
    from cogvx.speed import apply as speed
    from cogvx.speed.attention import restore_default_processor
    from cogvx.speed.cache import FastModeSlot, counting
    from cogvx.speed.select import BACKENDS, Device, installed_packages, plan_speedups

    cuda = torch.cuda.is_available() and not args.tiny
    levers = cuda or args.levers  # the CUDA levers (the tests run them on the tiny CPU model)
    device = speed.measure_device() if cuda else Device(cuda=False)
    shape = (9, 32, 48) if args.tiny else SHAPES[model]
    steps = 2 if args.tiny else int(per_model(args.steps, model, "5"))
    cap = 2 if args.tiny else int(per_model(args.fast_steps, model, str(E2E_STEPS)))
    chosen = settings_of(args, model)
    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(row)
        print(f"row: {json.dumps(row)}", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    try:
        pipe = build(model, "cuda" if cuda else "cpu", args.tiny)
    except Exception as exc:  # out of memory, a config this diffusers refuses: the next model
        add({"model": model, "setting": "build", "failed": _failure(exc)})
        return rows
    with counting(pipe.transformer):  # its hooks go in before anything is compiled
        pass
    installed = installed_packages()
    plan = plan_speedups(device, installed, "none")
    print(f"{model}: {device.describe()}; plan: {'; '.join(plan.log_lines())}", flush=True)
    clock, slot = StepClock(cuda, compiles), FastModeSlot(pipe.transformer, log=print)
    # the blocks are compiled; a compile is due at the next run; the decode row is done
    compiled = pending = decoded = False

    def peak_gib() -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0

    def skip(name: str, expected: float) -> None:
        left = forecast.left()
        add({"model": model, "setting": name, "skipped": True,
             "expected_s": round(expected, 1), "left_s": round(left, 1)})  # fmt: skip

    def decode(latents: Any) -> None:
        """The VAE decode row, once per model, from the first run's latents."""
        nonlocal decoded
        decoded = True
        latents = decoded_latents(pipe, latents, shape[0])
        pixels = shape[0] * shape[1] * shape[2]
        if not forecast.fits(forecast.decode(pixels)):
            skip("VAE decode", forecast.decode(pixels))
            return
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds = decode_seconds(pipe, latents, cuda)
        except Exception as exc:
            add({"model": model, "setting": "VAE decode", "failed": _failure(exc)})
            if cuda:
                torch.cuda.empty_cache()
            return
        add({"model": model, "setting": "VAE decode", "s": seconds, "peak": peak_gib(),
             "latent_frames": int(latents.shape[1])})  # fmt: skip
        forecast.decoded(seconds, pixels)

    def measure(name: str, mode: str = "off", side: bool = False) -> str:
        """Time one row: 'measured', 'failed' or 'skipped' (it would end past the deadline).
        `side`: a row the cumulative ones do not build on (an SDPA kernel on eager)."""
        nonlocal pending
        recompiles = compiled and (pending or mode != "off")
        if mode == "off":
            total = steps + 1
        else:
            total = cap if args.tiny else forecast.schedule(model, name, cap, recompiles)
        expected = forecast.seconds(model, name, total or min(cap, MIN_FAST_STEPS), recompiles)
        if total == 0 or not forecast.fits(expected):
            skip(name, expected)
            return "skipped"
        left = forecast.left()
        print(f"{model}: {name}: {total} steps, expected {expected:.0f} s, {left:.0f} s left",
              flush=True)  # fmt: skip
        try:
            slot.apply(mode, pipe, 6.0)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            compiles.arm()
            began, compiled_before = time.monotonic(), compiles.total
            with counting(pipe.transformer) as work:
                latents = denoise(pipe, shape, total, clock)
            wall, compile_s = time.monotonic() - began, compiles.total - compiled_before
            peak = peak_gib()  # this run's alone: read before the decode
        except Exception as exc:
            add({"model": model, "setting": name, "failed": _failure(exc)})
            slot.apply("off", pipe, 6.0)
            if cuda:
                torch.cuda.empty_cache()
            return "failed"
        pending = False
        if mode == "off":
            per_step, timed = statistics.median(clock.times[1:]), total - 1
        else:  # the whole schedule, less the compiles in it (setup()'s warm-up does those); the
            # first call of each new graph (loading its kernels) stays in: a little slow
            per_step, timed = max(sum(clock.times) - compile_s, 0.0) / total, total
        reused = 1 - work.attention / work.scheduled
        add({"model": model, "setting": name, "s_step": per_step, "steps": total,
             "timed": timed, "compile_s": compile_s, "compiling_steps": clock.compiling,
             "wall_s": wall, "peak": peak, "reused": reused})  # fmt: skip
        forecast.saw(model, name, per_step, compile_s, base=mode == "off" and not side)
        if not decoded:
            decode(latents)
        return "measured"

    def lever(
        name: str,
        key: str,
        apply: Callable[[], object],
        undo: Callable[[], object],
        side: bool = False,
    ) -> None:
        """Apply one setting, timed when chosen; undo it when it fails (a skipped row stays
        applied: the later rows are named as cumulative)."""
        try:
            apply()
        except Exception as exc:
            add({"model": model, "setting": name, "failed": _failure(exc)})
            undo()
            return
        if key in chosen and measure(name, side=side) == "failed":
            undo()

    def needed(key: str) -> bool:
        return any(later in chosen for later in LEVERS[LEVERS.index(key) :])

    def compile_on() -> None:
        nonlocal compiled, pending
        speed.compile_transformer(pipe.transformer, print)
        compiled = pending = True

    def compile_off() -> None:
        nonlocal compiled
        speed.uncompile(pipe.transformer)
        compiled = False

    def fp8() -> None:
        nonlocal pending
        torch._dynamo.reset()  # the graphs were compiled for bf16 weights
        pending = True
        speed.keep_unquantized(pipe.transformer)  # CPU copies of the bf16 weights, for fp8_off
        speed.quantize_transformer(pipe.transformer, "fp8", device.capability, print)

    def fp8_off() -> None:  # later rows run on the bf16 weights, not a (half) quantized model
        try:
            speed.restore_unquantized(pipe.transformer)
        except SetupError:  # fp8() failed before keeping them: the weights are untouched
            pass
        torch._dynamo.reset()

    if "eager" in chosen:
        measure("bf16 eager")
    for key, backend in KERNELS.items():
        if key not in chosen or not levers:
            continue
        name = f"attention {backend} (eager)"
        missing = BACKENDS[backend].missing(device, installed)
        if missing:
            add({"model": model, "setting": name, "skipped": missing})
            continue
        lever(
            name,
            key,
            partial(speed.install_attention, pipe, backend, print),
            lambda: restore_default_processor(pipe.transformer),
            side=True,
        )
        restore_default_processor(pipe.transformer)  # a side row: the levers start from eager
    if levers and needed("attention"):
        backend = plan.attention.value
        name = f"+ attention {backend}"
        if backend == "native":  # the dispatcher's native backend makes eager's own SDPA call
            speed.install_attention(pipe, backend, print)  # as setup() does
            if "attention" in chosen:
                why = "native is eager's SDPA call (no other backend installed); not re-timed"
                add({"model": model, "setting": name, "skipped": why})
        else:
            lever(
                name,
                "attention",
                lambda: speed.install_attention(pipe, backend, print),
                lambda: restore_default_processor(pipe.transformer),
            )
    if levers and needed("compile"):
        lever("+ compile", "compile", compile_on, compile_off)
    if levers and needed("fp8"):
        if plan.quantize.value == "fp8":
            lever("+ fp8", "fp8", fp8, fp8_off)
        elif "fp8" in chosen:
            add({"model": model, "setting": "+ fp8", "skipped": plan.quantize.reason})
    for mode in FAST_MODES:
        if mode in chosen:
            measure(f"+ fast_mode={mode}", mode)
    return rows


def print_table(rows: list[dict], card: str) -> None:
    """Markdown table per model, then the ratios to bf16 eager and the goals."""
    print(f"\n{card}\n")
    print("| model | setting | s/step | timed steps | est. end-to-end s (50 steps) | peak GiB | "
          "attention reused | vs bf16 eager |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    decode = {r["model"]: r["s"] for r in rows if r["setting"] == "VAE decode" and "s" in r}
    eager = {r["model"]: r["s_step"] for r in rows if r["setting"] == "bf16 eager" and "peak" in r}
    ratios: list[str] = []
    best: dict[str, tuple[str, float]] = {}
    for r in rows:
        model, setting = r["model"], r["setting"]
        if "failed" in r:
            print(f"| {model} | {setting} | failed: {r['failed']} | | | | | |")
            continue
        if r.get("skipped"):
            why = r["skipped"] if isinstance(r["skipped"], str) else (
                f"time budget (expected {r['expected_s']:.0f} s, {r['left_s']:.0f} s left)"
            )  # fmt: skip
            print(f"| {model} | {setting} | skipped: {why} | | | | | |")
            continue
        if setting == "VAE decode":
            print(f"| {model} | VAE decode ({r['latent_frames']} latent frames) | | | "
                  f"{r['s']:.1f} once per video | {r['peak']:.1f} | | |")  # fmt: skip
            continue
        e2e = E2E_STEPS * r["s_step"] + decode.get(model, 0.0)
        shown = f"{e2e:.1f}" if model in decode else f"{e2e:.1f} + decode"
        timed = f"{r['timed']} of {r['steps']}" if r["timed"] != r["steps"] else f"{r['steps']}"
        ratio = f"{eager[model] / r['s_step']:.2f}x" if model in eager and r["s_step"] else ""
        print(f"| {model} | {setting} | {r['s_step']:.3f} | {timed} | {shown} | "
              f"{r['peak']:.1f} | {r['reused']:.0%} | {ratio} |")  # fmt: skip
        if ratio:
            ratios.append(f"{model} {setting}: {ratio}")
        if not setting.startswith("attention ") and (model not in best or e2e < best[model][1]):
            best[model] = (setting, e2e)  # the deployable settings (not the side rows)
    print("\nratios (bf16 eager s/step / setting s/step):")
    for line in ratios:
        print("  " + line)
    print("\ngoals (best setting's est. end to end, 50 steps):")
    for model, (setting, e2e) in best.items():
        goal = GOALS.get(model, 0.0)
        verdict = "met" if e2e <= goal else f"{e2e / goal:.2f}x the goal" if goal else ""
        note = "" if model in decode else ", decode not measured"
        print(f"  {model}: {setting}: {e2e:.1f} s vs {goal:.0f} s: {verdict}{note}")


def card_name() -> str:
    """'NVIDIA H200 (sm 9.0)', or 'CPU (no CUDA device)'."""
    if not torch.cuda.is_available():
        return "CPU (no CUDA device)"
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (sm {major}.{minor})"


def versions() -> str:
    """The versions the numbers depend on: 'torch 2.11.0+cu130 (CUDA 13.0), diffusers ...'."""
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})"]
    for name in ("diffusers", "torchao", "triton"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"no {name}")
    return ", ".join(parts)


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The models, after refusing what would only fail on the card (a typo costs its time)."""
    models = args.models.split(",")
    for model in models:
        if model not in SHAPES:
            ap.error(f"--models: {model!r} is not one of {list(SHAPES)}")
    for option, values in (("--settings", args.settings), ("--steps", args.steps),
                           ("--fast-steps", args.fast_steps)):  # fmt: skip
        for value in values or []:
            key, sep, _ = value.partition("=")
            if sep and key not in models:
                ap.error(f"{option} {value}: {key!r} is not in --models")
    for model in models:
        unknown = [name for name in settings_of(args, model) if name not in SETTINGS]
        if unknown:
            ap.error(f"--settings: {unknown} for {model}; use some of {list(SETTINGS)}")
        for option, values in (("--steps", args.steps), ("--fast-steps", args.fast_steps)):
            value = per_model(values, model, "1")
            if not value.isdigit() or int(value) < 1:
                ap.error(f"{option}: {value!r} for {model} is not a whole number of steps >= 1")
    return models


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="t2v-5b,t2v-1.5")
    ap.add_argument("--settings", action="append", help="[MODEL=]NAME,... (default: all)")
    ap.add_argument("--steps", action="append", help="[MODEL=]N timed steps per row (default 5)")
    ap.add_argument("--fast-steps", action="append", help="[MODEL=]N fast_mode schedule (50)")
    ap.add_argument("--budget", type=float, help="seconds from now (540 without --deadline)")
    ap.add_argument("--deadline", type=float, help="Unix time by which the last row must end")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny models")
    ap.add_argument("--levers", action="store_true", help=argparse.SUPPRESS)  # --tiny: CPU levers
    ap.add_argument("--out", help="also append each row to this file as one JSON line")
    ap.add_argument("--versions", action="store_true", help="print the card and versions; exit")
    args = ap.parse_args(argv)
    if args.versions:
        print(f"{card_name()}; {versions()}")
        return
    models = check_args(ap, args)
    if not args.tiny and not torch.cuda.is_available():
        ap.exit(
            2, "bench_speed: no CUDA device: the full-size models need one (--tiny runs on CPU)\n"
        )
    budget = args.budget
    if budget is None:
        budget = 540.0 if args.deadline is None else float("inf")
    deadline = time.monotonic() + budget
    if args.deadline is not None:
        deadline = min(deadline, time.monotonic() + args.deadline - time.time())
    forecast, compiles = Forecast(deadline), compile_clock()
    card = f"{card_name()}; {versions()}"
    rows: list[dict] = []
    for model in models:
        rows += bench_model(model, args, forecast, compiles)
        torch._dynamo.reset()  # the next model compiles afresh, with its own recompile counts
        gc.collect()  # the pipeline (the cache hooks' configs hold it in a cycle)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print_table(rows, card)


if __name__ == "__main__":
    main()
