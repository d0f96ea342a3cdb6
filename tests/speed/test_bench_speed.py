"""The GPU speed benchmark's code runs (CPU smoke run on the tiny models: no CUDA row is timed),
and its parts that decide what runs and how long it may take."""

from __future__ import annotations

import json
import time

import pytest
import torch

from benchmarks.gpu import bench_speed
from benchmarks.gpu.bench_speed import Forecast

DECODE = "VAE decode (3 latent frames)"


def _table(out: str, model: str = "t2v-5b") -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"| {model} |")]


def test_tiny_smoke_run_prints_every_row(capsys):
    bench_speed.main(["--tiny", "--models", "t2v-5b"])
    out = capsys.readouterr().out
    table = _table(out)
    assert [line.split(" | ")[1] for line in table] == [
        "bf16 eager", DECODE, "+ fast_mode=balanced", "+ fast_mode=fast",
    ]  # fmt: skip
    assert "CPU (no CUDA device)" in out and "ratios (bf16 eager" in out
    assert "t2v-5b: " in out.split("goals (best setting's est. end to end")[1]


def test_the_decode_is_its_own_saved_row_of_the_frames_the_pipeline_decodes(tmp_path):
    """1.5 pads its latents by a frame (a multiple of its temporal patch); the pipeline drops
    the padding before decoding, so the benchmark decodes what the pipeline would."""
    out_file = tmp_path / "rows.jsonl"
    bench_speed.main(["--tiny", "--models", "t2v-1.5", "--out", str(out_file)])
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["setting"] for r in rows][:2] == ["bf16 eager", "VAE decode"]
    assert rows[1]["s"] > 0 and rows[1]["latent_frames"] == 3 and "peak" in rows[1]

    pipe = bench_speed.build("t2v-1.5", "cpu", tiny=True)
    latents = bench_speed.denoise(pipe, (9, 32, 48), 1, bench_speed.StepClock(cuda=False))
    assert pipe.transformer.config.patch_size_t == 2 and latents.shape[1] == 4  # 3 + padding
    assert torch.equal(bench_speed.decoded_latents(pipe, latents, 9), latents[:, 1:])


def test_settings_pick_the_rows_per_model(capsys):
    bench_speed.main(["--tiny", "--models", "t2v-5b,t2v-1.5", "--settings", "eager,balanced",
                      "--settings", "t2v-1.5=fast"])  # fmt: skip
    out = capsys.readouterr().out
    assert [line.split(" | ")[1] for line in _table(out)] == [
        "bf16 eager", DECODE, "+ fast_mode=balanced",
    ]  # fmt: skip
    assert [line.split(" | ")[1] for line in _table(out, "t2v-1.5")] == [
        "+ fast_mode=fast", DECODE,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--settings", "eager,fp16"], "['fp16'] for t2v-5b"),
        (["--settings", "t2v-1.5=eager"], "'t2v-1.5' is not in --models"),
        (["--steps", "t2v-5b=0"], "'0' for t2v-5b is not a whole number"),
        (["--models", "t2v-2b"], "'t2v-2b' is not one of"),
    ],
)
def test_a_bad_option_is_refused_before_anything_runs(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        bench_speed.main(["--tiny", "--models", "t2v-5b", *argv])  # the last --models wins
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_deadline_that_has_passed_skips_every_row(capsys, tmp_path):
    out_file = tmp_path / "rows.jsonl"
    past = str(time.time() - 1)
    bench_speed.main(["--tiny", "--models", "t2v-5b", "--deadline", past, "--out", str(out_file)])
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["setting"] for r in rows] == [
        "bf16 eager", "+ fast_mode=balanced", "+ fast_mode=fast",
    ]  # fmt: skip
    assert all(r["skipped"] is True and r["left_s"] < 0 for r in rows)
    assert "skipped: time budget (expected" in capsys.readouterr().out


def test_forecast_sizes_rows_from_what_was_measured():
    forecast = Forecast(1100.0, clock=lambda: 1000.0)  # a clock that stands still: 100 s left
    # before anything: the prior for bf16 eager (THUDM's H100 figure)
    assert forecast.step("t2v-5b", "bf16 eager") == bench_speed.PRIOR_S_STEP["t2v-5b"]
    # a compiling row counts the prior compile until one is measured
    assert forecast.seconds("t2v-5b", "+ compile", 6, compiles=True) == pytest.approx(
        bench_speed.ROW_OVERHEAD_S + 6 * 1.8 + bench_speed.PRIOR_COMPILE_S
    )
    forecast.saw("t2v-5b", "bf16 eager", 0.9, 0.0, base=True)  # this card: 2x the prior
    assert forecast.step("t2v-1.5", "bf16 eager") == pytest.approx(11.0 / 2)
    forecast.saw("t2v-5b", "+ compile", 0.6, 20.0, base=True)
    forecast.saw("t2v-5b", "+ fast_mode=balanced", 0.3, 5.0, base=False)
    assert forecast.step("t2v-5b", "+ fast_mode=fast") == 0.6  # from the last cumulative row
    assert forecast.seconds("t2v-5b", "+ x", 10, compiles=True) == pytest.approx(3 + 6 + 20)
    forecast.saw("t2v-1.5", "+ compile", 4.0, 30.0, base=True)
    # as balanced compared to compile on 5b: half
    assert forecast.step("t2v-1.5", "+ fast_mode=balanced") == pytest.approx(2.0)
    assert forecast.compile_s == 30.0
    # the longest schedule that fits: (100 / 1.15 - 3 - 30) / 2 = 26 steps
    assert forecast.schedule("t2v-1.5", "+ fast_mode=balanced", 50, compiles=True) == 26
    assert forecast.schedule("t2v-1.5", "+ fast_mode=balanced", 20, compiles=True) == 20
    forecast.deadline = 1050.0  # (50 / 1.15 - 33) / 2 = 5 < MIN_FAST_STEPS
    assert forecast.schedule("t2v-1.5", "+ fast_mode=balanced", 50, compiles=True) == 0
    assert forecast.fits(40) and not forecast.fits(45)
    assert forecast.decode(1000) == 0.0
    forecast.decoded(2.0, 100)
    assert forecast.decode(1000) == pytest.approx(20.0)


def test_compile_clock_adds_up_compile_time():
    clock = bench_speed.compile_clock()
    assert bench_speed.compile_clock() is clock

    @torch.compile(backend="eager")
    def f(x):
        return x * 2 + 1

    for _ in range(2):
        torch._dynamo.reset()  # clears the callbacks (and f's graph): armed again before a run
        clock.arm()
        clock.arm()  # once is enough
        handler = torch._dynamo.callback.callback_handler
        assert handler.start_callbacks.count(clock.begin) == 1
        before = clock.total
        f(torch.ones(3))
        assert clock.total > before and clock.began is None
    torch._dynamo.reset()


def test_restoring_the_saved_weights_undoes_quantization():
    """The fp8 row's undo (cogvx.speed.apply's keep / restore_unquantized): a quantized (here:
    int8, which runs on the CPU) transformer is bf16 again, computing exactly what it did
    before, so later rows do not run quantized."""
    from cogvx.dev.tiny import build_tiny_pipeline
    from cogvx.errors import SetupError
    from cogvx.speed.apply import keep_unquantized, quantize_transformer, restore_unquantized
    from tests.support.tiny_inputs import bf16_transformer_inputs

    pipe = build_tiny_pipeline("t2v-5b")
    transformer = pipe.transformer.to(torch.bfloat16)
    kwargs = bf16_transformer_inputs(pipe, 9)
    with torch.no_grad():
        reference = transformer(**kwargs)[0]
        kept = keep_unquantized(transformer)
        quantize_transformer(transformer, "int8", (8, 0), lambda _: None)
        assert not torch.equal(transformer(**kwargs)[0], reference)
        assert restore_unquantized(transformer) == kept > 0
        restored = transformer(**kwargs)[0]
    assert torch.equal(restored, reference)
    kinds = {type(m.weight) for m in transformer.modules() if isinstance(m, torch.nn.Linear)}
    assert kinds == {torch.nn.Parameter}
    with pytest.raises(SetupError, match="were not kept"):  # the copies went with the restore
        restore_unquantized(transformer)


def test_per_model_values():
    values = ["4", "t2v-1.5=3", "t2v-5b=6", "t2v-1.5=2"]
    assert bench_speed.per_model(values, "t2v-1.5", "5") == "2"
    assert bench_speed.per_model(values[:2], "t2v-5b", "5") == "4"
    assert bench_speed.per_model(None, "t2v-5b", "5") == "5"


def test_caption_batch_gpu_bench_smoke_run(capsys):
    from benchmarks.gpu import bench_caption_batch

    bench_caption_batch.main(["--tiny", "--clips", "4", "--tokens", "4", "--sizes", "1,2"])
    out = capsys.readouterr().out
    assert "| 1 |" in out and "| 2 |" in out and "batch 2:" in out


def test_a_failing_setting_becomes_a_row_and_the_run_goes_on(capsys, monkeypatch, tmp_path):
    """A lever that raises (a kernel the card refuses) is reported, not fatal: later rows run."""
    from cogvx.speed.cache import FastModeSlot

    real_apply = FastModeSlot.apply

    def apply(self, mode, pipe, guidance):
        if mode == "balanced":
            raise RuntimeError("no kernel image is available for execution on the device")
        return real_apply(self, mode, pipe, guidance)

    monkeypatch.setattr(FastModeSlot, "apply", apply)
    out_file = tmp_path / "rows.jsonl"
    bench_speed.main(["--tiny", "--models", "t2v-5b", "--out", str(out_file)])
    out = capsys.readouterr().out
    table = _table(out)
    assert [line.split(" | ")[1] for line in table] == [
        "bf16 eager", DECODE, "+ fast_mode=balanced", "+ fast_mode=fast",
    ]  # fmt: skip
    assert "failed: RuntimeError: no kernel image" in table[2]
    assert table[3].endswith("x |")  # measured after the failure
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["setting"] for r in rows] == [
        "bf16 eager", "VAE decode", "+ fast_mode=balanced", "+ fast_mode=fast",
    ]  # fmt: skip
    assert "failed" in rows[2] and rows[3]["s_step"] > 0


def test_full_size_without_cuda_is_refused_at_once(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_speed.main(["--models", "t2v-5b"])
    assert stop.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_failed_fp8_row_leaves_the_later_rows_on_the_unquantized_weights(monkeypatch, capsys):
    """The CUDA levers on the tiny CPU model (compile stubbed: its cost is not the point): the
    fp8 step quantizes for real (int8: it runs on the CPU), then fails; the rows after it run
    on the very weights the model had before."""
    import dataclasses

    from cogvx.dev.tiny import build_tiny_pipeline
    from cogvx.speed import apply as speed
    from cogvx.speed import select
    from cogvx.speed.cache import FastModeSlot

    real_plan, real_build = select.plan_speedups, bench_speed.build
    real_quantize, real_apply = speed.quantize_transformer, FastModeSlot.apply
    fp8 = select.Choice("fp8", "planned here")
    monkeypatch.setattr(
        select,
        "plan_speedups",
        lambda *a, **k: dataclasses.replace(real_plan(*a, **k), quantize=fp8),
    )
    built: list = []
    monkeypatch.setattr(bench_speed, "build", lambda *a: built.append(real_build(*a)) or built[-1])
    monkeypatch.setattr(speed, "compile_transformer", lambda transformer, log: None)

    def quantize_then_fail(transformer, mode, capability, log):
        real_quantize(transformer, "int8", capability, log)
        raise RuntimeError("no fp8 kernel for this card")

    monkeypatch.setattr(speed, "quantize_transformer", quantize_then_fail)
    kinds: dict[str, set] = {}

    def apply(self, mode, pipe, guidance):
        linears = [m for m in pipe.transformer.modules() if isinstance(m, torch.nn.Linear)]
        kinds[mode] = {type(m.weight).__name__ for m in linears}
        return real_apply(self, mode, pipe, guidance)

    monkeypatch.setattr(FastModeSlot, "apply", apply)
    bench_speed.main(["--tiny", "--levers", "--models", "t2v-5b", "--settings", "fp8,balanced"])
    table = _table(capsys.readouterr().out)
    assert [line.split(" | ")[1] for line in table] == [
        "+ fp8", "+ fast_mode=balanced", DECODE,
    ]  # fmt: skip
    assert "failed: RuntimeError: no fp8 kernel for this card" in table[0]
    assert kinds["balanced"] == {"Parameter"}
    fresh = build_tiny_pipeline("t2v-5b").transformer.state_dict()
    after = built[0].transformer.state_dict()
    assert fresh.keys() == after.keys() and all(torch.equal(fresh[k], after[k]) for k in fresh)


def test_the_step_clock_counts_the_steps_that_compiled():
    compiles = bench_speed.CompileClock()
    clock = bench_speed.StepClock(cuda=False, compiles=compiles)
    clock.start()
    for spent in (5.0, 0.0, 0.0, 2.0):
        compiles.total += spent
        clock(None, 0, None, {})
    assert len(clock.times) == 4 and clock.compiling == 2
    clock.start()
    clock(None, 0, None, {})
    assert clock.compiling == 0
