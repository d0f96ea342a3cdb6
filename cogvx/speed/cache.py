"""Per-request `fast_mode`: diffusers' step caches on the CogVideoX transformer, with exact restore.

- `off`: the reference computation (no hook on the model).
- `balanced` (default): FasterCache (Lv et al., ICLR 2025, which evaluates CogVideoX) with the
  parameters diffusers documents for CogVideoX-5b: attention recomputed every 2nd step below
  t=681 and blended with its trend, the unconditional half of the CFG batch recomputed every 5th
  step below t=781 (its low/high-frequency difference to the conditional half reused between).
- `fast`: First Block Cache (ParaAttention's FBCache, TeaCache's idea): when the first block's
  residual changed by less than 10 % since the last full step, the other blocks are skipped and
  their cached residual reused. Faster, and visible changes are possible (docs/speed.md).

The hooks are diffusers' own (`CacheMixin.enable_cache` / `disable_cache`); their state is reset
before every run so one request never sees another's cache. `AttentionCount` counts the work that
really ran, from the blocks' query projections, for the log line.

The counting hooks run inside the compiled blocks, so they must be installed before the blocks
are compiled (hooks added later are not traced: they would silently never run) and must count
in a tensor: a Python int in a compiled block is a guard that fails on every call, so the block
would be recompiled until torch gives up and runs it eagerly. For the same reason the cache hooks'
own Python logic (step counters, skip decisions) runs eagerly under compile
(`keep_hook_logic_eager`); the blocks and attention they call stay compiled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from cogvx import checks
from cogvx.log import log as log_line

FAST_MODES = ("off", "balanced", "fast")
DEFAULT_FAST_MODE = "balanced"
FBC_THRESHOLD = 0.1  # `fast`: relative change of the first block's residual (diffusers: 0.05)
MIN_BLOCKS_FBC = 2  # First Block Cache needs a block to skip (diffusers fails on 1)


def keep_hook_logic_eager() -> int:
    """Make torch.compile skip (not trace) the frames of diffusers' per-block cache hooks, once.

    Traced, their step counters and branch outcomes become guards: one more graph per step
    count, parity and timestep range, past torch's recompile limit on a 50-step request
    (measured on the tiny model: 7 more graphs in the first request after a warm-up; 0 with
    this). Only those frames are skipped: what they call (the attention, the block) is still
    compiled. Returns how many hook methods were newly wrapped."""
    from diffusers.hooks import faster_cache, first_block_cache

    wrapped = 0
    hooks = (
        faster_cache.FasterCacheBlockHook,
        first_block_cache.FBCHeadBlockHook,
        first_block_cache.FBCBlockHook,
    )
    for hook in hooks:
        if not getattr(hook.new_forward, "_torchdynamo_disable", False):
            hook.new_forward = torch.compiler.disable(hook.new_forward, recursive=False)
            wrapped += 1
    return wrapped


def check_fast_mode(value: str) -> str:
    """`value` if it is a fast_mode, else an InputError listing the modes."""
    return checks.choice("fast_mode", value, FAST_MODES)


def cache_config(mode: str, pipe: Any, guidance_scale: float) -> Any | None:
    """The diffusers cache config for `mode` on the running pipeline (None for `off`).

    FasterCache reads the pipeline's current timestep, so the config belongs to the pipeline
    object that runs (text-to-video or video-to-video); without guidance (scale <= 1) there is no
    unconditional half to reuse.
    """
    check_fast_mode(mode)
    if mode == "off":
        return None
    if mode == "fast" and len(pipe.transformer.transformer_blocks) >= MIN_BLOCKS_FBC:
        from diffusers import FirstBlockCacheConfig

        return FirstBlockCacheConfig(threshold=FBC_THRESHOLD)
    from diffusers import FasterCacheConfig

    return FasterCacheConfig(
        spatial_attention_block_skip_range=2,
        spatial_attention_timestep_skip_range=(-1, 681),
        current_timestep_callback=lambda: pipe.current_timestep,
        attention_weight_callback=lambda _: 0.3,
        unconditional_batch_skip_range=5,
        unconditional_batch_timestep_skip_range=(-1, 781),
        tensor_format="BFCHW",
        is_guidance_distilled=guidance_scale <= 1,
    )


def method_name(config: Any | None) -> str:
    """'FasterCache', 'FirstBlockCache' or 'none'."""
    return "none" if config is None else type(config).__name__.removesuffix("Config")


class FastModeSlot:
    """The cache hooks on one transformer: set per request, removed exactly for `off`."""

    def __init__(self, transformer: Any, log: Callable[[str], None] = log_line):
        self.transformer, self.log = transformer, log
        self.key: tuple | None = None  # what the hooks in place were made for

    def apply(self, mode: str, pipe: Any, guidance_scale: float) -> str:
        """Put `mode`'s hooks on the transformer (fresh state); returns the method's name."""
        check_fast_mode(mode)
        guided = guidance_scale > 1
        key = None if mode == "off" else (mode, guided, id(pipe), FBC_THRESHOLD)
        config = cache_config(mode, pipe, guidance_scale)
        if key != self.key:
            self.key = None  # no hooks until the new ones are in: a failure leaves `off`
            if self.transformer.is_cache_enabled:
                self.transformer.disable_cache()
            if config is not None:
                try:
                    self.transformer.enable_cache(config)
                except BaseException:
                    if self.transformer.is_cache_enabled:  # hooks put on half-way: off
                        self.transformer.disable_cache()
                    raise
            self.key = key
        if config is not None:
            self.transformer._reset_stateful_cache()  # a cancelled run leaves state behind
        if mode == "fast" and method_name(config) != "FirstBlockCache":
            n = len(self.transformer.transformer_blocks)
            self.log(
                f"fast_mode=fast: First Block Cache needs >= {MIN_BLOCKS_FBC} transformer blocks; "
                f"this model has {n}, so FasterCache runs"
            )
        return method_name(config)


@dataclass
class AttentionCount:
    """What the transformer really computed during a run."""

    layers: int
    calls: int = 0  # transformer forward calls
    samples: int = 0  # sum of their batch sizes
    # attention evaluations that ran, per sample (batch rows): a tensor on the hidden states'
    # device, made anew at the run's first call, added to inside the (compiled) blocks
    ran: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.int64))
    fresh: bool = True

    @property
    def attention(self) -> int:
        """Attention evaluations that ran, counted per sample (reads the device once)."""
        return int(self.ran.item())

    @property
    def scheduled(self) -> int:
        """Attention evaluations without any cache: every block, every sample, every call."""
        return self.samples * self.layers

    def describe(self, mode: str, method: str, steps: int) -> str:
        """The log line: calls versus the schedule, and attention computed versus reused."""
        reused = 1 - self.attention / self.scheduled if self.scheduled else 0.0
        return (
            f"fast_mode={mode} ({method}): {self.calls} transformer calls for {steps} steps; "
            f"attention computed {self.attention} of {self.scheduled} times ({reused:.0%} reused)"
        )


def install_counter(transformer: Any) -> AttentionCount:
    """Hooks that count transformer calls and the attention that ran, installed once, before
    any compile (`VideoModel.load`, the benchmarks).

    They stay for the model's life (one set of hooks, so a compiled graph's guards see the same
    hooks on every request); `counting` zeroes the counts around each run.
    """
    existing = getattr(transformer, "_cogvx_count", None)
    if existing is not None:
        return existing
    blocks = transformer.transformer_blocks
    count = AttentionCount(layers=len(blocks))

    def on_call(_module: Any, args: tuple, kwargs: dict) -> None:  # outside compiled code
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if count.fresh:  # same device and (inference) mode as the run: one compiled graph
            count.ran = torch.zeros((), dtype=torch.int64, device=x.device)
            count.fresh = False
        count.calls += 1
        count.samples += int(x.shape[0])

    def on_query(_module: Any, args: tuple) -> None:  # inside a compiled block: no Python state
        count.ran.add_(args[0].shape[0])

    transformer.register_forward_pre_hook(on_call, with_kwargs=True)
    for b in blocks:
        b.attn1.to_q.register_forward_pre_hook(on_query)
    transformer._cogvx_count = count
    return count


@contextmanager
def counting(transformer: Any) -> Iterator[AttentionCount]:
    """The work of the run inside the block: counts zeroed on entry."""
    count = install_counter(transformer)
    count.layers = len(transformer.transformer_blocks)
    count.calls = count.samples = 0
    count.ran, count.fresh = torch.zeros((), dtype=torch.int64), True
    yield count
