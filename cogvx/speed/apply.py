"""Apply the speed plan to a CogVideoX pipeline at setup, and warm the compiled blocks up.

`apply_speedups` measures the device, makes the three choices (`cogvx.speed.select`), logs one
line each and, on CUDA, applies them in this order: the attention processor, torchao
quantization of the transformer blocks' linear layers, regional compilation of the blocks. The
warm-up's fallback undoes them in the reverse order (`fallback_steps`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

import torch

from cogvx import settings
from cogvx.errors import SetupError
from cogvx.log import log as log_line
from cogvx.speed.attention import use_dispatch_processor, use_native_attention
from cogvx.speed.cache import keep_hook_logic_eager
from cogvx.speed.select import Choice, Device, SpeedPlan, installed_packages, plan_speedups

REPEATED_BLOCKS = ["CogVideoXBlock"]
WARM_UP_SEED = 0
# A 12-step schedule meets every branch of the default cache (both timestep ranges, every skip
# phase), so the first request compiles nothing new (tiny model: +0 graphs; 2 steps: +7)
WARM_UP_STEPS = 12


def measure_device() -> Device:
    """The CUDA device this process will run on (Device(cuda=False) without one)."""
    if not torch.cuda.is_available():
        return Device(cuda=False)
    major, minor = torch.cuda.get_device_capability()
    return Device(cuda=True, capability=(major, minor), name=torch.cuda.get_device_name())


def apply_speedups(
    pipe: Any,
    offload: str,
    log: Callable[[str], None] = log_line,
    device: Device | None = None,
    installed: Collection[str] | None = None,
) -> SpeedPlan:
    """Choose (from the device, packages and COGVX_* settings), log and, on CUDA, apply; on a
    CPU only a forced CPU attention backend applies (compile and quantization need CUDA)."""
    device = measure_device() if device is None else device
    installed = installed_packages() if installed is None else installed
    plan = plan_speedups(
        device,
        installed,
        offload,
        attention_env=settings.attention_mode(),
        compile_env=settings.compile_mode(),
        quantize_env=settings.quantize_mode(),
    )
    for line in plan.log_lines():
        log(line)
    if device.cuda:
        apply_plan(pipe, plan, device, log)
    elif plan.attention.value != "native":  # a CPU backend forced by COGVX_ATTENTION: it runs
        install_attention(pipe, plan.attention.value, log)
    return plan


def apply_plan(
    pipe: Any, plan: SpeedPlan, device: Device, log: Callable[[str], None] = log_line
) -> None:
    """Apply a plan made for `device` (CUDA): attention, then quantization, then compile."""
    install_attention(pipe, plan.attention.value, log)
    if plan.quantize.value != "none":
        keep_unquantized(pipe.transformer)  # the warm-up's fallback puts these back
        quantize_transformer(pipe.transformer, plan.quantize.value, device.capability, log)
    if plan.compile.value:
        compile_transformer(pipe.transformer, log)


def install_attention(pipe: Any, backend: str, log: Callable[[str], None] = log_line) -> int:
    """Route the transformer's attention layers through diffusers' dispatcher on `backend`."""
    count = use_dispatch_processor(pipe.transformer, backend)
    log(f"speed: {count} attention layers on the {backend} backend")
    return count


def quantized_linear(module: torch.nn.Module, fqn: str) -> bool:
    """torchao filter: the blocks' attention and feed-forward linears (not the small AdaLN
    modulation linears, which see one row per sample, nor the embeddings and output head)."""
    return (
        isinstance(module, torch.nn.Linear)
        and fqn.startswith("transformer_blocks.")
        and ".norm" not in fqn
    )


def keep_unquantized(transformer: Any) -> int:
    """Keep CPU copies of the linear weights `quantize_transformer` replaces (on the card they
    would cost memory), for `restore_unquantized`; returns how many were kept."""
    transformer._cogvx_unquantized = {
        name: module.weight.detach().to("cpu", copy=True)
        for name, module in transformer.named_modules()
        if quantized_linear(module, name)
    }
    return len(transformer._cogvx_unquantized)


def restore_unquantized(transformer: Any) -> int:
    """Put `keep_unquantized`'s copies back (undoes torchao's `quantize_`, also one that failed
    half-way) and drop them; returns how many linears got their plain weights back.
    SetupError when none were kept: the weights cannot be put back."""
    saved = getattr(transformer, "_cogvx_unquantized", None)
    if saved is None:
        raise SetupError("the transformer's unquantized weights were not kept (keep_unquantized)")
    modules = dict(transformer.named_modules())
    for name, weight in saved.items():
        module = modules[name]
        module.weight = torch.nn.Parameter(weight.to(module.weight.device), requires_grad=False)
        module.__dict__.pop("extra_repr", None)  # torchao's, describing the quantized weight
    forget_unquantized(transformer)
    torch._dynamo.reset()  # graphs traced for the quantized weights
    return len(saved)


def forget_unquantized(transformer: Any) -> None:
    """Drop `keep_unquantized`'s copies (the quantized model warmed up: no fallback needs them)."""
    if hasattr(transformer, "_cogvx_unquantized"):
        del transformer._cogvx_unquantized


def quantize_transformer(
    transformer: Any,
    mode: str,
    capability: tuple[int, int],
    log: Callable[[str], None] = log_line,
) -> None:
    """torchao `quantize_` of the blocks' linears: 'fp8' (dynamic fp8 activations and fp8
    weights, per-row scales on Hopper+, per-tensor below) or 'int8' (int8 weight-only)."""
    from torchao.quantization import (  # the GPU path only: torchao is optional
        Float8DynamicActivationFloat8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
        PerTensor,
        quantize_,
    )

    # set_inductor_config=False: torchao's default turns on inductor's coordinate-descent tuning
    # (and more) for the whole process, lengthening every later compile, not only these layers'
    config: Any
    if mode == "fp8":
        per_row = capability >= (9, 0)
        config = Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow() if per_row else PerTensor(), set_inductor_config=False
        )
        what = f"fp8 ({'per-row' if per_row else 'per-tensor'} scales)"
    elif mode == "int8":
        config, what = Int8WeightOnlyConfig(set_inductor_config=False), "int8 weight-only"
    else:
        raise ValueError(f"unknown quantization mode {mode!r}")
    start = time.perf_counter()
    quantize_(transformer, config, filter_fn=quantized_linear)
    log(f"speed: transformer blocks quantized to {what} in {time.perf_counter() - start:.1f} s")


def compile_transformer(transformer: Any, log: Callable[[str], None] = log_line) -> None:
    """Regional torch.compile: each CogVideoXBlock compiled once (compiles lazily).

    Not `fullgraph`: fast_mode's cache hooks wrap the blocks and decide per step from tensor
    values (First Block Cache compares residuals), which breaks a graph by design."""
    keep_hook_logic_eager()  # the cache hooks' counters must not become guards
    transformer._repeated_blocks = REPEATED_BLOCKS
    transformer.compile_repeated_blocks(fullgraph=False)
    log(f"speed: {len(transformer.transformer_blocks)} blocks set to compile on first call")


def warm_up(
    pipe: Any,
    height: int,
    width: int,
    num_frames: int,
    log: Callable[[str], None] = log_line,
    steps: int = WARM_UP_STEPS,
) -> float:
    """One short generation at this size from random prompt embeddings (no text encoder, no
    VAE decode), so compilation happens at setup, not in the first prediction; returns seconds."""
    config = pipe.transformer.config
    generator = torch.Generator("cpu").manual_seed(WARM_UP_SEED)
    shape = (1, config.max_text_seq_length, config.text_embed_dim)
    place = {"device": pipe._execution_device, "dtype": pipe.transformer.dtype}
    embeds, negative = (torch.randn(shape, generator=generator).to(**place) for _ in range(2))
    kwargs: dict[str, Any] = {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative,
        "height": height,
        "width": width,
        "num_frames": num_frames,
        "num_inference_steps": steps,
        "output_type": "latent",
        "generator": generator,
    }
    if "image" in inspect.signature(pipe.__call__).parameters:  # image-to-video
        from PIL import Image

        kwargs["image"] = Image.new("RGB", (width, height), (128, 128, 128))
    start = time.perf_counter()
    with torch.inference_mode():  # as requests run: the graphs' guards include the tensors' mode
        pipe(**kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    size = f"{steps} steps at {width}x{height}, {num_frames} frames"
    log(f"speed: warm-up took {seconds:.1f} s ({size})")
    return seconds


def uncompile(transformer: Any) -> int:
    """Undo `compile_transformer`: the blocks run eagerly again; returns how many were undone."""
    undone = 0
    for block in transformer.transformer_blocks:
        if block._compiled_call_impl is not None:
            block._compiled_call_impl = None
            undone += 1
    torch._dynamo.reset()
    return undone


# What each rung of the warm-up's fallback ladder undoes, in order: the last speed-up applied
# (`apply_plan`: attention, then quantization, then compile) is the first one undone
WITHOUT_COMPILE = "without compile"
WITHOUT_QUANTIZE = "without quantization"
ON_NATIVE = "on native attention"


def fallback_steps(plan: SpeedPlan) -> list[str]:
    """The warm-up's tries for `plan`, in order (pure): as planned, then without compile, then
    on bf16 weights (fp8/int8 undone), then on native attention, each only when the plan has it."""
    steps = ["as planned"]
    if plan.compile.value:
        steps.append(WITHOUT_COMPILE)
    if plan.quantize.value != "none":
        steps.append(WITHOUT_QUANTIZE)
    if plan.attention.value != "native":
        steps.append(ON_NATIVE)
    return steps


def fallback_ladder(pipe: Any, plan: SpeedPlan) -> list[tuple[str, Callable[[], SpeedPlan]]]:
    """`fallback_steps(plan)` with what each does: each step undoes one speed-up on `pipe`, on
    top of the steps before it, and returns the plan that is then in force."""
    current = plan

    def as_planned() -> SpeedPlan:
        return current

    def drop_compile() -> SpeedPlan:
        nonlocal current
        uncompile(pipe.transformer)
        current = replace(current, compile=Choice(False, "compiled warm-up failed: eager blocks"))
        return current

    def drop_quantize() -> SpeedPlan:
        nonlocal current
        restore_unquantized(pipe.transformer)
        was = current.quantize.value
        current = replace(current, quantize=Choice("none", f"{was} failed at warm-up: bf16"))
        return current

    def drop_attention() -> SpeedPlan:
        nonlocal current
        use_native_attention(pipe.transformer)
        was = current.attention.value
        current = replace(current, attention=Choice("native", f"{was} failed at warm-up"))
        return current

    undo = {
        WITHOUT_COMPILE: drop_compile,
        WITHOUT_QUANTIZE: drop_quantize,
        ON_NATIVE: drop_attention,
    }
    return [(step, undo.get(step, as_planned)) for step in fallback_steps(plan)]


class WarmUpFailed(SetupError):
    """The warm-up failed at one rung of the ladder; `more` says whether a later rung exists."""

    def __init__(self, message: str, more: bool):
        super().__init__(message)
        self.more = more


def warm_up_or_fall_back(
    pipe: Any,
    plan: SpeedPlan,
    size: tuple[int, int, int],
    log: Callable[[str], None] = log_line,
    run: Callable[..., float] | None = None,
    rung: int | None = None,
) -> SpeedPlan:
    """Warm up at `size` (frames, height, width); if that fails, undo compile, then quantization
    (the unquantized weights put back), then the attention backend, each logged, and try again,
    so a kernel that fails on this card costs speed rather than the deployment. Returns the plan
    that ran (the unquantized copies are dropped then); raises SetupError if even eager bf16 fails.

    `rung=k` (multi-GPU ranks, which must all run the same plan) applies the ladder's first k+1
    steps and tries once; a failure raises WarmUpFailed, and the caller restarts every rank at k+1.
    """
    run = run or warm_up
    ladder = fallback_ladder(pipe, plan)
    if rung is not None:
        if not 0 <= rung < len(ladder):
            raise SetupError(f"warm-up rung {rung} does not exist (this plan has {len(ladder)})")
        for _, make in ladder[: rung + 1]:
            plan = make()
        error = _try_warm_up(pipe, size, ladder[rung][0], run, log)
        if error:
            raise WarmUpFailed(error, more=rung + 1 < len(ladder))
        forget_unquantized(pipe.transformer)
        return plan
    errors = []
    for what, make in ladder:
        plan = make()
        error = _try_warm_up(pipe, size, what, run, log)
        if error is None:
            forget_unquantized(pipe.transformer)
            return plan
        errors.append(error)
    raise SetupError("the transformer fails even eagerly on this card: " + "; ".join(errors))


def _try_warm_up(
    pipe: Any,
    size: tuple[int, int, int],
    what: str,
    run: Callable[..., float],
    log: Callable[[str], None],
) -> str | None:
    """Run one warm-up; None if it worked, else the failure as one logged line."""
    frames, height, width = size
    try:
        run(pipe, height, width, frames, log)
        return None
    except Exception as e:  # noqa: BLE001 - any kernel/compiler failure: fall back, logged
        error = f"{what}: {type(e).__name__}: {str(e)[:300]}"
        log(f"speed: warm-up {what} failed ({error})")
        return error
