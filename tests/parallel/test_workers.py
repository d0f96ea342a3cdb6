"""The multi-GPU worker lifecycle with 2 CPU processes on gloo: start, run (against the
single-process run), input errors, cancel, a dying rank, a warm-up failing on one rank,
shutdown. Tiny t2v-5b weights."""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pytest

from cogvx.cogvideox.generate import Request, VideoModel
from cogvx.dev.tiny import save_tiny_weights
from cogvx.errors import InputError, SetupError
from cogvx.parallel.plan import Degrees
from cogvx.parallel.workers import ParallelVideoModel, WorkerError
from tests.support.faulty_rank import FAULT, rank_1_fails_first_warm_up

# Split runs sum in other orders (shards, batch of one): the frames may differ by a level or two.
# Measured on AMD Zen 4: Ulysses max 1 level (off) / identical (balanced); CFG split identical.
FRAME_TOLERANCE = 3


def _request(**kw) -> Request:
    base = dict(prompt="a red fox runs", negative_prompt="", num_frames=9, num_inference_steps=4,
                guidance_scale=6.0, use_dynamic_cfg=True, seed=3, fast_mode="off")  # fmt: skip
    return Request(**{**base, **kw})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_weights("t2v-5b", tmp_path_factory.mktemp("par") / "t2v-5b")


@pytest.fixture(scope="module")
def single(folder):
    return VideoModel.load("t2v-5b", str(folder), log=lambda _: None)


@pytest.fixture(scope="module")
def lora_cache(tmp_path_factory):
    """One LoRA cache for this module's processes: the ranks inherit it when they start."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("loras")
        mp.setenv("COGVX_LORA_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def pool(folder, lora_cache):
    lines: list[str] = []
    model = ParallelVideoModel.start("t2v-5b", str(folder), Degrees(ulysses=2), "cpu", lines.append)
    model.lines = lines  # type: ignore[attr-defined]
    yield model
    model.close()


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_ulysses_split_matches_the_single_process_run(pool, single):
    for mode in ("off", "balanced"):
        split = pool.generate(_request(fast_mode=mode))
        alone = single.generate(_request(fast_mode=mode))
        assert split.frames.shape == alone.frames.shape == (9, 32, 48, 3)
        assert split.seed == alone.seed == 3
        assert _max_diff(split.frames, alone.frames) <= FRAME_TOLERANCE
    again = pool.generate(_request(fast_mode="balanced"))
    assert np.array_equal(again.frames, split.frames)  # same seed, same split: same frames
    text = "\n".join(pool.lines)
    assert "parallel: 2 workers ready" in text and "seed: 3" in text  # rank 0's logs relayed
    assert "attention computed" in text


def test_blank_seed_is_drawn_once_for_every_rank(pool, single):
    blank = pool.generate(_request(seed=None, num_inference_steps=2))
    alone = single.generate(_request(seed=blank.seed, num_inference_steps=2))
    assert _max_diff(blank.frames, alone.frames) <= FRAME_TOLERANCE  # the logged seed reproduces


def test_a_lora_is_downloaded_once_for_every_rank(pool, single, tmp_path):
    """The predictor fetches it; both ranks load it from the cache; the split run with the LoRA
    matches the single-process run with it, and differs from the base model."""
    from tests.support.loras import save_diffusers_lora
    from tests.support.weights_server import WeightsServer

    lora = save_diffusers_lora(tmp_path / "style.safetensors")
    with WeightsServer({"/style.safetensors": lora}) as server:
        url = server.url("/style.safetensors")
        base = pool.generate(_request())
        with_lora = pool.generate(_request(lora_url=url))
        again = pool.generate(_request(lora_url=url, lora_scale=0.5))
        assert server.count("/style.safetensors") == 1
        alone = single.generate(_request(lora_url=url))
        assert server.count("/style.safetensors") == 1  # the single process hit the cache too
        single.lora.apply(None)
    assert _max_diff(with_lora.frames, alone.frames) <= FRAME_TOLERANCE
    assert _max_diff(with_lora.frames, base.frames) > 10 * FRAME_TOLERANCE
    assert not np.array_equal(again.frames, with_lora.frames)
    text = "\n".join(pool.lines)
    assert "lora: downloaded" in text and "lora: cache hit" in text and "lora: scale 0.5" in text


def test_only_rank_0_decodes(folder):
    """A model told not to decode stops at the latents: the VAE decoder never runs."""
    model = VideoModel.load("t2v-5b", str(folder), log=lambda _: None)
    calls = []
    decode = model.pipe.vae.decode
    model.pipe.vae.decode = lambda *a, **k: calls.append(1) or decode(*a, **k)
    assert model.generate(_request()).frames.shape == (9, 32, 48, 3) and len(calls) > 0
    calls.clear()
    model.decode = False
    result = model.generate(_request())
    assert result.frames.shape == (0, 32, 48, 3) and result.seed == 3 and calls == []


def test_cfg_split_matches_and_turns_the_step_caches_off(folder, single):
    lines: list[str] = []
    model = ParallelVideoModel.start("t2v-5b", str(folder), Degrees(cfg=2), "cpu", lines.append)
    try:
        split = model.generate(_request(fast_mode="balanced"))
        alone = single.generate(_request(fast_mode="off"))
        assert _max_diff(split.frames, alone.frames) <= FRAME_TOLERANCE
        assert any("fast_mode=balanced runs as off" in line for line in lines)
        one_pass = model.generate(_request(guidance_scale=1.0))  # batch of one: not split
        assert one_pass.frames.shape == (9, 32, 48, 3)
    finally:
        model.close()
    assert not any(p.is_alive() for p in model.procs)


def test_an_input_error_on_the_ranks_reaches_the_caller_and_the_pool_keeps_serving(pool):
    with pytest.raises(InputError, match="num_frames"):
        pool.generate(_request(num_frames=10))
    assert pool.generate(_request(num_inference_steps=1)).frames.shape == (9, 32, 48, 3)


class _Cancel(BaseException):
    """What coglet raises in the run thread (its CancelationException is a BaseException)."""


def _long_run_started(pool) -> tuple[threading.Thread, dict]:
    """A 100-step request in a thread (its exception lands in the dict), once rank 0 denoises."""
    outcome: dict = {}
    before = len(pool.lines)

    def run() -> None:
        try:
            pool.generate(_request(num_inference_steps=100))
        except BaseException as exc:  # noqa: BLE001
            outcome["exc"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not any("generating" in line for line in pool.lines[before:]):
        assert time.monotonic() < deadline, pool.lines[before:]
        time.sleep(0.05)
    outcome["before"] = before
    return thread, outcome


def test_cancel_in_the_waiting_thread_stops_every_rank_then_the_next_request_runs(pool):
    thread, outcome = _long_run_started(pool)
    t0 = time.monotonic()
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(_Cancel)
    )
    thread.join(60)
    assert isinstance(outcome.get("exc"), _Cancel)
    assert time.monotonic() - t0 < 30  # stopped at a step, not after 100 of them
    assert not any("generated in" in line for line in pool.lines[outcome["before"] :])
    assert len(pool.procs) == 2 and all(p.is_alive() for p in pool.procs)  # no restart needed
    assert pool.generate(_request(num_inference_steps=1)).frames.shape == (9, 32, 48, 3)


def test_a_rank_that_dies_fails_the_request_and_the_pool_restarts(pool):
    thread, outcome = _long_run_started(pool)
    old = list(pool.procs)
    old[1].kill()
    thread.join(300)
    assert isinstance(outcome.get("exc"), WorkerError), outcome
    assert "rank" in str(outcome["exc"])
    assert not any(p.is_alive() for p in old)  # the survivor was stopped too
    result = pool.generate(_request(num_inference_steps=1))  # a new pool
    assert result.frames.shape == (9, 32, 48, 3)
    assert pool.procs and all(p not in old for p in pool.procs)


def test_close_stops_every_worker(folder):
    model = ParallelVideoModel.start("t2v-5b", str(folder), Degrees(ulysses=2), "cpu")
    procs = list(model.procs)
    assert all(p.is_alive() for p in procs)
    model.close()
    assert not any(p.is_alive() for p in procs)
    assert all(p.exitcode == 0 for p in procs)  # they left on "stop", not by a signal


def test_a_warm_up_failing_on_one_rank_restarts_every_rank_one_step_further(
    folder, single, monkeypatch
):
    """Rank 1's warm-up fails as planned: both ranks start again on native attention (the next
    fallback step), so they run the same plan, and the split still exchanges the shards' tokens
    (its attention stays on the dispatcher): the frames match the single-process run."""
    monkeypatch.setenv("COGVX_ATTENTION", "_native_math")  # a plan with a step to fall back to
    lines: list[str] = []
    model = ParallelVideoModel.start(
        "t2v-5b", str(folder), Degrees(ulysses=2), "cpu", lines.append,
        warm_up=True, target=rank_1_fails_first_warm_up,
    )  # fmt: skip
    try:
        text = "\n".join(lines)
        assert f"parallel: warm-up failed on rank 1 (as planned: RuntimeError: {FAULT})" in text
        assert text.count("parallel: starting 2 workers") == 2 and model.rung == 1
        assert "speed: warm-up took" in text and "parallel: 2 workers ready" in text
        split = model.generate(_request())
        alone = single.generate(_request())
        assert _max_diff(split.frames, alone.frames) <= FRAME_TOLERANCE
    finally:
        model.close()


def test_a_warm_up_failure_with_nothing_left_to_drop_fails_setup_naming_the_rank(folder):
    """Native attention, no compile: nothing to fall back to, so setup fails with the cause."""
    with pytest.raises(SetupError, match=f"rank 1: as planned: RuntimeError: {FAULT}"):
        ParallelVideoModel.start(
            "t2v-5b", str(folder), Degrees(ulysses=2), "cpu", lambda _: None,
            warm_up=True, target=rank_1_fails_first_warm_up,
        )  # fmt: skip
