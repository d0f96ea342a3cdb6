"""GPU speed of the CogVideoX transformer per setting, full size, random weights (no download).

    python -m benchmarks.gpu.bench_speed [--models t2v-5b,t2v-1.5] [--budget 540]
    python -m benchmarks.gpu.bench_speed --tiny      # CPU smoke run of the same code (tests)

Builds each model from the released configs (`cogvx.cogvideox.released`) with random bf16
weights on the card: 5b at 49 x 480 x 720, 1.5 at 81 x 768 x 1360, guidance 6 with dynamic CFG,
THUDM's DPM scheduler, random prompt embeddings (T5 costs ~0.1 s and is left out). Settings are
cumulative, in this order: bf16 eager; + attention backend (the best the card and packages
allow: `cogvx.speed.select`); + regional compile; + fp8 (torchao, cards >= 8.9); then each
fast_mode on top. Per setting: seconds per step (median of timed steps after a warm-up that
also compiles), estimated end-to-end seconds for 50 steps (steps x s/step + VAE decode, measured
once), peak GPU memory, and the ratio to bf16 eager. fast_mode rows run the whole 50-step
schedule (their skipping depends on it) while the budget allows. Pictures are noise: this
measures time and memory, not quality. Ratios last. A setting that fails is a `failed` row
(undone; the run goes on), each row prints as measured, and `--out` appends it as JSON, so a
time limit that cuts the run short still leaves the rows so far (benchmarks/gpu/on_device.sh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from cogvx.models import get_variant, scheduler_config

E2E_STEPS = 50
SHAPES = {"t2v-5b": (49, 480, 720), "t2v-1.5": (81, 768, 1360)}


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
    """Wall time of every denoising step (the pipeline's step-end callback)."""

    def __init__(self, cuda: bool):
        self.cuda, self.times, self.last = cuda, [], 0.0

    def start(self) -> None:
        self.sync()
        self.times, self.last = [], time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, _pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
        self.sync()
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        return kwargs


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


def bench_model(model: str, args: argparse.Namespace, deadline: float) -> list[dict]:
    """Every setting's row for one model (cumulative settings).

    A setting that fails (a kernel this card or torch refuses, out of memory) becomes a `failed`
    row and the run goes on without it, so one bad lever cannot cost the device time of the
    rest; each row is printed as soon as it is measured (`--out` also writes it as JSON)."""
    from cogvx.speed import apply as speed
    from cogvx.speed.attention import restore_default_processor
    from cogvx.speed.cache import FastModeSlot, counting
    from cogvx.speed.select import Device, installed_packages, plan_speedups

    cuda = torch.cuda.is_available() and not args.tiny
    device = speed.measure_device() if cuda else Device(cuda=False)
    shape = (9, 32, 48) if args.tiny else SHAPES[model]
    steps = 2 if args.tiny else args.steps
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
    plan = plan_speedups(device, installed_packages(), "none")
    print(f"{model}: {device.describe()}; plan: {'; '.join(plan.log_lines())}", flush=True)
    clock, slot = StepClock(cuda), FastModeSlot(pipe.transformer, log=print)

    def measure(name: str, run_steps: int, mode: str = "off") -> bool:
        last = next((r["s_step"] for r in reversed(rows) if "s_step" in r), 0.0)
        now = time.monotonic()
        if now > deadline or now + 1.2 * last * (run_steps + 2) > deadline:
            add({"model": model, "setting": name, "skipped": True})
            return False
        try:
            slot.apply(mode, pipe, 6.0)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            denoise(pipe, shape, 2, clock)  # warm-up (compiles)
            with counting(pipe.transformer) as work:
                latents = denoise(pipe, shape, run_steps, clock)
        except Exception as exc:
            add({"model": model, "setting": name, "failed": _failure(exc)})
            slot.apply("off", pipe, 6.0)
            if cuda:
                torch.cuda.empty_cache()
            return False
        per_step = statistics.median(clock.times) if mode == "off" else sum(clock.times) / run_steps
        if not any("decode" in r for r in rows):
            try:
                rows.append({"model": model, "decode": decode_seconds(pipe, latents, cuda)})
            except Exception as exc:
                add({"model": model, "setting": "VAE decode", "failed": _failure(exc)})
        reused = 1 - work.attention / work.scheduled
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        add({"model": model, "setting": name, "s_step": per_step, "peak": peak,
             "reused": reused})  # fmt: skip
        return True

    def lever(name: str, apply: Callable[[], object], undo: Callable[[], object]) -> None:
        """Apply one cumulative setting and measure it; undo it when it fails."""
        try:
            apply()
        except Exception as exc:
            add({"model": model, "setting": name, "failed": _failure(exc)})
            undo()
            return
        if not measure(name, steps):
            undo()

    measure("bf16 eager", steps)
    if cuda:
        backend = plan.attention.value
        if backend == "native":  # the dispatcher's native backend makes eager's own SDPA call
            speed.install_attention(pipe, backend, print)  # as setup() does
            why = "native is eager's SDPA call (no other backend installed); not re-timed"
            add({"model": model, "setting": f"+ attention {backend}", "skipped": why})
        else:
            lever(
                f"+ attention {backend}",
                lambda: speed.install_attention(pipe, backend, print),
                lambda: restore_default_processor(pipe.transformer),
            )
        lever(
            "+ compile",
            lambda: speed.compile_transformer(pipe.transformer, print),
            lambda: speed.uncompile(pipe.transformer),
        )
        if plan.quantize.value == "fp8":

            def fp8() -> None:
                torch._dynamo.reset()
                speed.quantize_transformer(pipe.transformer, "fp8", device.capability, print)

            lever("+ fp8", fp8, torch._dynamo.reset)
        else:
            add({"model": model, "setting": "+ fp8", "skipped": plan.quantize.reason})
    full = 2 if args.tiny else E2E_STEPS
    measure("+ fast_mode=balanced", full, "balanced")
    measure("+ fast_mode=fast", full, "fast")
    return rows


def print_table(rows: list[dict], card: str) -> None:
    """Markdown table per model, then the ratios to bf16 eager."""
    print(f"\n{card}\n")
    print("| model | setting | s/step | est. end-to-end s (50 steps) | peak GiB | attention "
          "reused | vs bf16 eager |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    decode, base, ratios = 0.0, {}, []
    for r in rows:
        if "decode" in r:
            decode = r["decode"]
            continue
        if "failed" in r:
            print(f"| {r['model']} | {r['setting']} | failed: {r['failed']} | | | | |")
            continue
        if r.get("skipped"):
            why = r["skipped"] if isinstance(r["skipped"], str) else "time budget"
            print(f"| {r['model']} | {r['setting']} | skipped: {why} | | | | |")
            continue
        base.setdefault(r["model"], r["s_step"])
        ratio = base[r["model"]] / r["s_step"]
        e2e = E2E_STEPS * r["s_step"] + decode
        print(f"| {r['model']} | {r['setting']} | {r['s_step']:.3f} | {e2e:.1f} | "
              f"{r['peak']:.1f} | {r['reused']:.0%} | {ratio:.2f}x |")  # fmt: skip
        ratios.append(f"{r['model']} {r['setting']}: {ratio:.2f}x")
    print("\nratios (bf16 eager s/step / setting s/step):")
    for line in ratios:
        print("  " + line)


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="t2v-5b,t2v-1.5")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per setting (s/step)")
    ap.add_argument("--budget", type=float, default=540, help="seconds; later rows are skipped")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny models")
    ap.add_argument("--out", help="also append each row to this file as one JSON line")
    ap.add_argument("--versions", action="store_true", help="print the card and versions; exit")
    args = ap.parse_args(argv)
    if args.versions:
        print(f"{card_name()}; {versions()}")
        return
    if not args.tiny and not torch.cuda.is_available():
        ap.exit(
            2, "bench_speed: no CUDA device: the full-size models need one (--tiny runs on CPU)\n"
        )
    deadline = time.monotonic() + args.budget
    card = f"{card_name()}; {versions()}"
    rows: list[dict] = []
    for model in args.models.split(","):
        rows += bench_model(model, args, deadline)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print_table(rows, card)


if __name__ == "__main__":
    main()
