"""Applying the speed plan (issue "Fast on the GPU"): on CPU nothing changes; the CUDA path is
checked through its decisions and wiring, never run here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, build_tiny_pipeline
from cogvx.errors import SetupError
from cogvx.speed import apply as speed_apply
from cogvx.speed.apply import (
    apply_plan,
    apply_speedups,
    compile_transformer,
    install_attention,
    measure_device,
    quantize_transformer,
    quantized_linear,
    warm_up,
)
from cogvx.speed.attention import DispatchCogVideoXAttnProcessor
from cogvx.speed.select import Choice, Device, SpeedPlan, plan_speedups

ENVS = ("COGVX_ATTENTION", "COGVX_COMPILE", "COGVX_QUANTIZE")
CPU = Device(cuda=False)
H100 = Device(True, (9, 0), "NVIDIA H100")


@pytest.fixture(autouse=True)
def _no_speed_settings(monkeypatch):
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)


def _run(pipe, frames: int = 9) -> np.ndarray:
    return pipe(
        prompt="a cat on the dog",
        height=TINY_HEIGHT,
        width=TINY_WIDTH,
        num_frames=frames,
        num_inference_steps=2,
        guidance_scale=6.0,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(5),
    ).frames[0]


def _untouched(transformer) -> bool:
    return all(type(p) is CogVideoXAttnProcessor2_0 for p in transformer.attn_processors.values())


def test_measure_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert measure_device() == Device(cuda=False, capability=(0, 0), name="cpu")


@pytest.mark.parametrize("device", [CPU, None], ids=["given", "measured"])
def test_no_cuda_logs_three_reasons_and_changes_nothing(device, monkeypatch):
    if device is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pipe = build_tiny_pipeline("t2v-5b")
    before = _run(pipe)
    logs: list[str] = []
    plan = apply_speedups(pipe, "cpu", log=logs.append, device=device)
    assert logs == [
        "speed: attention=native (no CUDA device)",
        "speed: compile=off (no CUDA device)",
        "speed: quantize=none (no CUDA device)",
    ]
    assert (plan.attention.value, plan.compile.value, plan.quantize.value) == (
        "native",
        False,
        "none",
    )
    assert _untouched(pipe.transformer)
    assert all(b._compiled_call_impl is None for b in pipe.transformer.transformer_blocks)
    assert np.array_equal(_run(pipe), before)


def test_a_forced_cpu_attention_backend_is_installed_as_logged(monkeypatch):
    """COGVX_ATTENTION=_native_math on a CPU: the plan says it, and it is what runs."""
    monkeypatch.setenv("COGVX_ATTENTION", "_native_math")
    pipe, logs = build_tiny_pipeline("t2v-5b"), []
    plan = apply_speedups(pipe, "cpu", log=logs.append, device=CPU)
    assert plan.attention.value == "_native_math"
    processors = list(pipe.transformer.attn_processors.values())
    assert all(isinstance(p, DispatchCogVideoXAttnProcessor) for p in processors)
    assert {p.backend.value for p in processors} == {"_native_math"}
    n = len(pipe.transformer.transformer_blocks)
    assert logs[-1] == f"speed: {n} attention layers on the _native_math backend"


def test_bad_setting_is_refused_at_setup(monkeypatch):
    monkeypatch.setenv("COGVX_COMPILE", "yes")
    with pytest.raises(SetupError, match="COGVX_COMPILE='yes' is not allowed"):
        apply_speedups(build_tiny_pipeline("t2v-2b"), "cpu", log=lambda _: None, device=CPU)


def test_cuda_device_is_planned_from_the_settings_and_applied(monkeypatch):
    """A fake H100: the decisions and the hand-over to apply_plan, with no CUDA code run."""
    monkeypatch.setenv("COGVX_ATTENTION", "_flash_3")
    monkeypatch.setenv("COGVX_QUANTIZE", "int8")
    applied: list[tuple] = []
    monkeypatch.setattr(speed_apply, "apply_plan", lambda *a: applied.append(a))
    pipe, logs = object(), []
    installed = frozenset({"flash_attn_3", "torchao"})
    plan = apply_speedups(pipe, "model", log=logs.append, device=H100, installed=installed)
    assert plan == plan_speedups(H100, installed, "model", "_flash_3", None, "int8")
    assert (plan.attention.value, plan.compile.value, plan.quantize.value) == (
        "_flash_3",
        True,
        "int8",
    )
    assert applied == [(pipe, plan, H100, logs.append)]
    assert logs == plan.log_lines()


def test_install_attention_on_cpu_keeps_the_output():
    pipe = build_tiny_pipeline("i2v-5b")
    image = torch.rand(3, TINY_HEIGHT, TINY_WIDTH, generator=torch.Generator().manual_seed(1))

    def run() -> np.ndarray:
        return pipe(
            image=image,
            prompt="a dog",
            height=TINY_HEIGHT,
            width=TINY_WIDTH,
            num_frames=9,
            num_inference_steps=2,
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(5),
        ).frames[0]

    before = run()
    logs: list[str] = []
    count = install_attention(pipe, "native", logs.append)
    assert count == len(pipe.transformer.transformer_blocks)
    assert logs == [f"speed: {count} attention layers on the native backend"]
    assert np.array_equal(run(), before)


def test_apply_plan_with_native_attention_only_swaps_the_processor():
    pipe = build_tiny_pipeline("t2v-1.5")
    before = _run(pipe, frames=17)
    plan = SpeedPlan(Choice("native", "test"), Choice(False, "test"), Choice("none", "test"))
    apply_plan(pipe, plan, CPU, log=lambda _: None)
    processors = pipe.transformer.attn_processors.values()
    assert all(isinstance(p, DispatchCogVideoXAttnProcessor) for p in processors)
    assert np.array_equal(_run(pipe, frames=17), before)


def test_compile_marks_every_block_for_regional_compilation():
    pipe = build_tiny_pipeline("t2v-2b")
    logs: list[str] = []
    compile_transformer(pipe.transformer, logs.append)  # lazy: nothing compiles until a call
    assert pipe.transformer._repeated_blocks == ["CogVideoXBlock"]
    blocks = pipe.transformer.transformer_blocks
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert logs == [f"speed: {len(blocks)} blocks set to compile on first call"]


def test_quantize_filter_takes_the_blocks_attention_and_feed_forward_linears():
    transformer = build_tiny_pipeline("t2v-5b").transformer
    names = {n for n, m in transformer.named_modules() if quantized_linear(m, n)}
    first = {n.split(".", 2)[2] for n in names if n.startswith("transformer_blocks.0.")}
    assert first == {
        "attn1.to_q",
        "attn1.to_k",
        "attn1.to_v",
        "attn1.to_out.0",
        "ff.net.0.proj",
        "ff.net.2",
    }
    assert len(names) == 6 * len(transformer.transformer_blocks)


@pytest.fixture
def quantize_calls(monkeypatch):
    """torchao's real configs, with `quantize_` recording its arguments: fp8's dynamic
    activation scaling refuses a CPU, so the configs are checked as handed over."""
    import torchao.quantization

    calls: list[tuple] = []
    monkeypatch.setattr(
        torchao.quantization,
        "quantize_",
        lambda model, config, filter_fn: calls.append((model, config, filter_fn)),
    )
    return calls


@pytest.mark.parametrize(
    ("capability", "granularity", "what"),
    [((9, 0), "PerRow", "fp8 (per-row"), ((8, 9), "PerTensor", "fp8 (per-tensor")],
)
def test_fp8_hands_torchao_its_config(quantize_calls, capability, granularity, what):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

    model, logs = object(), []
    quantize_transformer(model, "fp8", capability, logs.append)
    [(got_model, config, filter_fn)] = quantize_calls
    assert got_model is model and filter_fn is quantized_linear
    assert isinstance(config, Float8DynamicActivationFloat8WeightConfig)
    assert type(config.granularity[0]).__name__ == granularity
    assert logs[0].startswith(f"speed: transformer blocks quantized to {what}")


def test_int8_quantizes_the_block_linears_and_keeps_the_output_close():
    """Real torchao on the CPU: the blocks' linears hold int8 weights, the rest stays bf16."""
    from tests.support.tiny_inputs import bf16_transformer_inputs

    pipe = build_tiny_pipeline("t2v-5b")
    transformer = pipe.transformer.to(torch.bfloat16)
    kwargs = bf16_transformer_inputs(pipe, 9)
    with torch.no_grad():
        reference = transformer(**kwargs)[0].float()
        logs: list[str] = []
        quantize_transformer(transformer, "int8", (8, 0), logs.append)
        out = transformer(**kwargs)[0].float()
    kinds = {
        name: type(module.weight).__name__
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    quantized = {name for name, kind in kinds.items() if kind != "Parameter"}
    assert quantized == {n for n, m in transformer.named_modules() if quantized_linear(m, n)}
    assert {kinds[n] for n in quantized} == {"Int8Tensor"}
    err = (out - reference).abs().max() / reference.abs().max()
    assert 0 < err < 0.02  # changed (int8 weights), and close
    assert logs[0].startswith("speed: transformer blocks quantized to int8 weight-only")


def test_unknown_quantize_mode_is_a_bug():
    with pytest.raises(ValueError, match="unknown quantization mode 'nf4'"):
        quantize_transformer(object(), "nf4", (9, 0))


@pytest.mark.parametrize(("model", "frames"), [("t2v-5b", 9), ("i2v-5b", 9), ("i2v-1.5", 17)])
def test_warm_up_runs_without_the_text_encoder_and_logs(model, frames, monkeypatch):
    pipe = build_tiny_pipeline(model)

    def no_text_encoder(*args, **kwargs):
        raise AssertionError("warm-up must not encode a prompt")

    monkeypatch.setattr(pipe.text_encoder, "forward", no_text_encoder)
    monkeypatch.setattr(pipe.vae, "decode", no_text_encoder)  # output_type="latent": no decode
    steps: list[int] = []
    real_forward = pipe.transformer.forward

    def counting_forward(*args, **kwargs):
        steps.append(kwargs["hidden_states"].shape[0])
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", counting_forward)
    logs: list[str] = []
    seconds = warm_up(pipe, TINY_HEIGHT, TINY_WIDTH, frames, logs.append, steps=2)
    assert steps == [2, 2]  # two steps, each with the CFG pair (as a prediction runs them)
    assert seconds > 0
    size = f"2 steps at {TINY_WIDTH}x{TINY_HEIGHT}, {frames} frames"
    assert logs == [f"speed: warm-up took {seconds:.1f} s ({size})"]
