"""A speed-up that fails on the card costs speed, not the deployment: the warm-up falls back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName

from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, build_tiny_pipeline
from cogvx.errors import SetupError
from cogvx.speed.apply import (
    WarmUpFailed,
    apply_plan,
    compile_transformer,
    fallback_steps,
    uncompile,
    warm_up_or_fall_back,
)
from cogvx.speed.attention import DispatchCogVideoXAttnProcessor, use_dispatch_processor
from cogvx.speed.select import Choice, Device, SpeedPlan
from tests.support.tiny_inputs import bf16_transformer_inputs

SIZE = (9, TINY_HEIGHT, TINY_WIDTH)


def _plan(attention="sage", compiled=True) -> SpeedPlan:
    return SpeedPlan(Choice(attention, "test"), Choice(compiled, "test"), Choice("none", "test"))


def _frames(pipe) -> np.ndarray:
    return pipe(
        prompt="a cat", height=TINY_HEIGHT, width=TINY_WIDTH, num_frames=9,
        num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(1),
    ).frames[0]  # fmt: skip


def _compiled(pipe) -> bool:
    return any(b._compiled_call_impl is not None for b in pipe.transformer.transformer_blocks)


def _dispatch(pipe) -> bool:
    procs = pipe.transformer.attn_processors.values()
    return any(isinstance(p, DispatchCogVideoXAttnProcessor) for p in procs)


def test_compile_failure_falls_back_to_eager_blocks():
    pipe = build_tiny_pipeline("t2v-5b")
    want = _frames(pipe)
    compile_transformer(pipe.transformer, lambda _: None)
    calls, logs = [], []

    def run(p, h, w, n, log):
        calls.append(_compiled(p))
        if _compiled(p):
            raise RuntimeError("inductor: no kernel for this card")
        return 0.0

    plan = warm_up_or_fall_back(pipe, _plan("native"), SIZE, logs.append, run=run)
    assert calls == [True, False]
    assert plan.compile == Choice(False, "compiled warm-up failed: eager blocks")
    assert plan.attention.value == "native"
    assert "speed: warm-up as planned failed (as planned: RuntimeError: inductor" in logs[0]
    assert np.array_equal(_frames(pipe), want)  # eager again, bit for bit


def test_attention_failure_falls_back_to_native():
    pipe = build_tiny_pipeline("t2v-2b")
    use_dispatch_processor(pipe.transformer, "_native_math")
    logs = []

    def run(p, h, w, n, log):
        if _dispatch(p):
            raise RuntimeError("sageattention: unsupported head dim")
        return 0.0

    plan = warm_up_or_fall_back(pipe, _plan("sage", compiled=False), SIZE, logs.append, run=run)
    assert plan.attention == Choice("native", "sage failed at warm-up")
    assert not _dispatch(pipe) and len(logs) == 1


def test_eager_failure_is_a_setup_error_naming_every_try():
    pipe = build_tiny_pipeline("t2v-5b")

    def run(p, h, w, n, log):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(SetupError, match="as planned: OutOfMemoryError.*without compile.*on nat"):
        warm_up_or_fall_back(pipe, _plan(), SIZE, lambda _: None, run=run)


def test_a_working_plan_warms_up_once_and_is_kept():
    pipe = build_tiny_pipeline("t2v-5b")
    runs = []
    plan = _plan()
    assert warm_up_or_fall_back(pipe, plan, SIZE, print, run=lambda *a: runs.append(1)) is plan
    assert runs == [1]


def test_uncompile_counts_and_clears():
    pipe = build_tiny_pipeline("t2v-5b")
    assert uncompile(pipe.transformer) == 0
    compile_transformer(pipe.transformer, lambda _: None)
    assert uncompile(pipe.transformer) == len(pipe.transformer.transformer_blocks)
    assert not _compiled(pipe)


def test_native_fallback_on_a_split_keeps_the_dispatcher_and_its_parallel_config():
    """A context-parallel transformer's attention must keep exchanging the shards' tokens:
    falling back puts the dispatcher on `native`, not diffusers' shard-blind processor."""
    pipe = build_tiny_pipeline("t2v-5b")
    use_dispatch_processor(pipe.transformer, "_native_math")
    config = object()  # stands for diffusers' ParallelConfig (cogvx.parallel sets it)
    for processor in pipe.transformer.attn_processors.values():
        processor._parallel_config = config

    def run(p, h, w, n, log):
        backends = {proc.backend for proc in p.transformer.attn_processors.values()}
        if backends != {AttentionBackendName.NATIVE}:
            raise RuntimeError("unsupported head dim")
        return 0.0

    plan = warm_up_or_fall_back(pipe, _plan("_native_math", False), SIZE, lambda _: None, run=run)
    assert plan.attention == Choice("native", "_native_math failed at warm-up")
    processors = list(pipe.transformer.attn_processors.values())
    assert all(isinstance(p, DispatchCogVideoXAttnProcessor) for p in processors)
    assert all(p._parallel_config is config for p in processors)


def test_one_rung_applies_the_steps_before_it_and_tries_once():
    """Multi-GPU ranks try only the step the predictor names; a failure says if one is left."""
    pipe = build_tiny_pipeline("t2v-5b")
    use_dispatch_processor(pipe.transformer, "_native_math")
    compile_transformer(pipe.transformer, lambda _: None)
    seen = []

    def run(p, h, w, n, log):
        seen.append((_compiled(p), _dispatch(p)))
        raise RuntimeError("boom")

    with pytest.raises(WarmUpFailed, match="without compile: RuntimeError: boom") as failed:
        warm_up_or_fall_back(pipe, _plan("sage"), SIZE, lambda _: None, run=run, rung=1)
    assert failed.value.more and seen == [(False, True)]  # compile undone, attention kept
    with pytest.raises(WarmUpFailed, match="on native attention") as failed:
        warm_up_or_fall_back(pipe, _plan("sage"), SIZE, lambda _: None, run=run, rung=2)
    assert not failed.value.more and seen[-1] == (False, False)
    plan = warm_up_or_fall_back(pipe, _plan("sage"), SIZE, lambda _: None, run=lambda *a: 0, rung=2)
    assert plan.compile.value is False and plan.attention.value == "native"
    with pytest.raises(SetupError, match="rung 3 does not exist"):
        warm_up_or_fall_back(pipe, _plan("sage"), SIZE, lambda _: None, run=run, rung=3)


@pytest.mark.parametrize(
    ("attention", "compiled", "quantize", "steps"),
    [
        ("sage", True, "fp8", ["as planned", "without compile", "without quantization",
                               "on native attention"]),
        ("sage", False, "fp8", ["as planned", "without quantization", "on native attention"]),
        ("native", True, "int8", ["as planned", "without compile", "without quantization"]),
        ("flash", True, "none", ["as planned", "without compile", "on native attention"]),
        ("native", False, "none", ["as planned"]),
    ],
)  # fmt: skip
def test_the_ladder_undoes_the_last_applied_speed_up_first(attention, compiled, quantize, steps):
    """apply_plan applies attention, then quantization, then compile: undone in reverse."""
    plan = SpeedPlan(Choice(attention, "t"), Choice(compiled, "t"), Choice(quantize, "t"))
    assert fallback_steps(plan) == steps


def _plain_weights(transformer) -> bool:
    return all(
        type(m.weight) is torch.nn.Parameter
        for m in transformer.modules()
        if isinstance(m, torch.nn.Linear)
    )


def test_a_quantized_warm_up_failure_puts_the_unquantized_weights_back():
    """Real torchao int8 on the CPU through apply_plan: a kernel failure on the quantized weights
    (at every rung with them) falls back to the very bf16 weights, keeping the attention backend."""
    pipe = build_tiny_pipeline("t2v-5b")
    transformer = pipe.transformer.to(torch.bfloat16)
    kwargs = bf16_transformer_inputs(pipe, 9)
    use_dispatch_processor(transformer, "_native_math")  # the reference on the same kernel
    with torch.no_grad():
        reference = transformer(**kwargs)[0]
    plan = SpeedPlan(Choice("_native_math", "t"), Choice(False, "t"), Choice("int8", "t"))
    apply_plan(pipe, plan, Device(True, (8, 0), "card"), lambda _: None)
    assert not _plain_weights(transformer) and _dispatch(pipe)
    tries = []

    def run(p, h, w, n, log):
        tries.append(_plain_weights(p.transformer))
        if not _plain_weights(p.transformer):
            raise RuntimeError("int8 mm: no kernel for this card")
        return 0.0

    done = warm_up_or_fall_back(pipe, plan, SIZE, lambda _: None, run=run)
    assert tries == [False, True]
    assert done.quantize == Choice("none", "int8 failed at warm-up: bf16")
    assert done.attention.value == "_native_math" and _dispatch(pipe)  # attention kept
    with torch.no_grad():
        assert torch.equal(transformer(**kwargs)[0], reference)  # the bf16 weights, bit for bit
    assert not hasattr(transformer, "_cogvx_unquantized")  # the copies are dropped


def test_a_working_quantized_warm_up_drops_the_kept_copies():
    pipe = build_tiny_pipeline("t2v-5b")
    pipe.transformer.to(torch.bfloat16)
    plan = SpeedPlan(Choice("native", "t"), Choice(False, "t"), Choice("int8", "t"))
    apply_plan(pipe, plan, Device(True, (8, 0), "card"), lambda _: None)
    assert pipe.transformer._cogvx_unquantized
    assert warm_up_or_fall_back(pipe, plan, SIZE, lambda _: None, run=lambda *a: 0.0) is plan
    assert not hasattr(pipe.transformer, "_cogvx_unquantized")
