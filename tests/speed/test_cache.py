"""fast_mode on real tiny runs: the caches really skip work, state never leaks between requests,
and `off` after any mode is bit-identical to `off` before."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cogvx.cogvideox.generate import Request, VideoModel
from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, build_tiny_pipeline
from cogvx.errors import InputError
from cogvx.gpu import plan_memory
from cogvx.models import FOLDER_OVERRIDES, get_variant
from cogvx.speed import cache

STEPS = 12  # enough trailing steps to enter FasterCache's skip ranges (t < 681 and t < 781)


def _model(name, folder, layers_of=None):
    (folder / FOLDER_OVERRIDES).write_text(json.dumps({"height": TINY_HEIGHT, "width": TINY_WIDTH}))
    v = get_variant(name).with_folder_overrides(folder)
    logs: list[str] = []
    pipe = build_tiny_pipeline(name)
    if layers_of is not None:
        pipe.transformer.transformer_blocks = pipe.transformer.transformer_blocks[:layers_of]
    return VideoModel(v, pipe, plan_memory(v.memory, None), logs.append), logs


def _req(mode, **kw):
    base = dict(
        prompt="a cat on the dog", negative_prompt="", num_frames=9, num_inference_steps=STEPS,
        guidance_scale=6.0, use_dynamic_cfg=True, seed=3, fast_mode=mode,
    )  # fmt: skip
    return Request(**{**base, **kw})


def _work(logs, mode):
    line = [m for m in logs if m.startswith(f"fast_mode={mode} ")][-1]
    m = re.search(
        r"(\d+) transformer calls for (\d+) steps; attention computed (\d+) of (\d+)", line
    )
    assert m, line
    return line, tuple(int(x) for x in m.groups())


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    return _model("t2v-5b", tmp_path_factory.mktemp("t2v"))


def test_off_after_any_mode_is_bit_identical_to_off_before(t2v):
    model, logs = t2v
    before = model.generate(_req("off")).frames
    line, (calls, steps, computed, scheduled) = _work(logs, "off")
    assert (calls, steps) == (STEPS, STEPS) and computed == scheduled == STEPS * 2 * 2
    assert "(none)" in line and "0% reused" in line
    for mode in ("balanced", "fast", "balanced"):
        model.generate(_req(mode))
    after = model.generate(_req("off")).frames
    assert not model.pipe.transformer.is_cache_enabled
    assert np.array_equal(before, after)


def test_balanced_reuses_attention_and_is_reproducible(t2v):
    model, logs = t2v
    off = model.generate(_req("off")).frames
    a = model.generate(_req("balanced")).frames
    line, (calls, steps, computed, scheduled) = _work(logs, "balanced")
    assert "(FasterCache)" in line
    assert calls == steps == STEPS
    assert computed < scheduled  # attention states reused, the unconditional half skipped
    model.generate(_req("balanced", prompt="a dog in the sea", seed=9))  # other state in between
    b = model.generate(_req("balanced")).frames
    assert np.array_equal(a, b)  # the cache starts fresh for every request
    assert not np.array_equal(a, off)  # it changed the computation


def test_fast_skips_whole_blocks_when_the_first_block_barely_changes(t2v, monkeypatch):
    model, logs = t2v
    monkeypatch.setattr(cache, "FBC_THRESHOLD", 1e9)  # every step after the first is "unchanged"
    model.generate(_req("fast"))
    line, (calls, _, computed, scheduled) = _work(logs, "fast")
    assert "(FirstBlockCache)" in line
    layers, batch = 2, 2
    # the first step runs both blocks, every later one only the first block
    assert computed == layers * batch + (calls - 1) * batch
    assert scheduled == calls * layers * batch
    monkeypatch.setattr(cache, "FBC_THRESHOLD", 0.0)  # nothing is ever "unchanged"
    full = model.generate(_req("fast")).frames
    _, (_, _, computed, scheduled) = _work(logs, "fast")
    assert computed == scheduled
    assert np.array_equal(full, model.generate(_req("off")).frames)  # no skip: the reference


def test_the_released_threshold_gives_the_same_file_twice(t2v):
    model, logs = t2v
    a = model.generate(_req("fast")).frames
    b = model.generate(_req("fast")).frames
    assert np.array_equal(a, b)
    assert "fast_mode=fast (FirstBlockCache)" in _work(logs, "fast")[0]
    assert not any("First Block Cache needs" in m for m in logs)


def test_no_guidance_and_video_to_video_run_with_every_mode(t2v):
    model, logs = t2v
    for mode in cache.FAST_MODES:
        model.generate(_req(mode, guidance_scale=1.0))
        _, (calls, _, computed, scheduled) = _work(logs, mode)
        assert scheduled == calls * 2  # batch 1: no unconditional half
    n = get_variant("t2v-5b").v2v_frames[0]
    video = np.random.default_rng(0).integers(0, 255, (n, TINY_HEIGHT, TINY_WIDTH, 3), np.uint8)
    for mode in cache.FAST_MODES:
        model.generate(_req(mode, video=video, num_frames=None, strength=0.5))
        _, (calls, steps, _, _) = _work(logs, mode)
        assert calls == steps == STEPS // 2


def test_one_block_model_runs_fastercache_for_fast_and_says_so(tmp_path):
    model, logs = _model("t2v-2b", tmp_path, layers_of=1)
    model.generate(_req("fast", num_inference_steps=3))
    assert "First Block Cache needs >= 2 transformer blocks; this model has 1" in "\n".join(logs)
    assert "(FasterCache)" in _work(logs, "fast")[0]


def test_bad_fast_mode_names_the_modes(t2v):
    model, _ = t2v
    with pytest.raises(InputError, match=r"fast_mode='turbo' is not allowed.*'off', 'balanced'"):
        model.generate(_req("turbo"))


def test_counts_run_inside_compiled_blocks_without_recompiling(tmp_path):
    """The counting hooks are installed before compile (as `VideoModel.load` does) and count in
    a tensor: the compiled blocks run them (right counts), and they cost no recompiles (a Python
    int there was a guard failing on every call, until torch gave up and ran the block eagerly)."""
    import torch
    from torch._dynamo.utils import counters

    model, logs = _model("t2v-5b", tmp_path)
    transformer = model.pipe.transformer
    cache.install_counter(transformer)
    transformer._repeated_blocks = ["CogVideoXBlock"]
    transformer.compile_repeated_blocks(fullgraph=False, backend="eager")
    counters.clear()
    graphs = []
    try:
        for _ in range(2):  # a second request reuses the graphs: a new count, same guards
            model.generate(_req("off", num_inference_steps=3))
            _, (calls, steps, computed, scheduled) = _work(logs, "off")
            assert (calls, steps, computed, scheduled) == (3, 3, 3 * 2 * 2, 3 * 2 * 2)
            graphs.append(counters["stats"]["unique_graphs"])
    finally:
        torch._dynamo.reset()
    print("compiled graphs after each request:", graphs)
    assert graphs[0] == graphs[1] <= 3  # one per input layout of a block, and no more


def test_load_installs_the_counter_before_the_speed_plan_can_compile(tmp_path, monkeypatch):
    """Hooks added after compile are not traced (they would silently never run)."""
    from cogvx.cogvideox import generate
    from cogvx.dev.tiny import save_tiny_weights

    seen = []
    real = generate.apply_speedups
    monkeypatch.setattr(
        generate,
        "apply_speedups",
        lambda pipe, *a, **k: (
            seen.append(hasattr(pipe.transformer, "_cogvx_count")) or real(pipe, *a, **k)
        ),
    )
    folder = save_tiny_weights("t2v-5b", tmp_path / "w")
    generate.VideoModel.load("t2v-5b", str(folder), log=lambda _: None)
    assert seen == [True]


def test_after_the_warm_up_the_default_mode_compiles_nothing_new(tmp_path):
    """Setup's warm-up (12 steps, under inference mode like requests, cache hooks' logic left
    eager) meets every graph the default fast_mode needs: a 50-step request adds none, so the
    first prediction is not the slow one."""
    import torch
    from torch._dynamo.utils import counters

    from cogvx.speed.apply import warm_up

    model, _ = _model("t2v-5b", tmp_path)
    transformer = model.pipe.transformer
    cache.install_counter(transformer)
    assert cache.keep_hook_logic_eager() in (0, 3)  # 0: an earlier test wrapped them already
    transformer._repeated_blocks = ["CogVideoXBlock"]
    transformer.compile_repeated_blocks(fullgraph=False, backend="eager")
    counters.clear()
    v = model.variant
    try:
        model.fast.apply(cache.DEFAULT_FAST_MODE, model.pipe, v.default_guidance)
        warm_up(model.pipe, v.height, v.width, 9, lambda _: None)
        after_warm_up = counters["stats"]["unique_graphs"]
        model.generate(_req("balanced", num_inference_steps=50))
        assert counters["stats"]["unique_graphs"] == after_warm_up
    finally:
        torch._dynamo.reset()


def test_a_failed_enable_leaves_no_hooks_and_the_next_request_puts_them_on(monkeypatch):
    """enable_cache raising (e.g. out of memory) must not leave the slot believing the old
    hooks are in place: the next request of that mode installs them again."""
    pipe = build_tiny_pipeline("t2v-5b")
    transformer = pipe.transformer
    slot = cache.FastModeSlot(transformer, lambda _: None)
    assert slot.apply("balanced", pipe, 6.0) == "FasterCache"
    real = transformer.enable_cache

    def fails_once(config):
        monkeypatch.setattr(transformer, "enable_cache", real)
        raise RuntimeError("enable failed")

    monkeypatch.setattr(transformer, "enable_cache", fails_once)
    with pytest.raises(RuntimeError, match="enable failed"):
        slot.apply("fast", pipe, 6.0)
    assert slot.key is None and not transformer.is_cache_enabled
    assert slot.apply("balanced", pipe, 6.0) == "FasterCache"
    assert transformer.is_cache_enabled and slot.key is not None
