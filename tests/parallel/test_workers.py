"""The multi-GPU worker lifecycle with 2 CPU processes on gloo: start, run (against the
single-process run), input errors, cancel, a dying rank, a warm-up failing on one rank,
shutdown, and the faults around them (a rank dying between requests, cancels landing between
sends or twice, a pool started from a short-lived thread, the rendezvous). Tiny t2v-5b
weights."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cogvx.cogvideox.generate import VideoModel
from cogvx.dev.tiny import save_tiny_weights
from cogvx.errors import InputError, SetupError
from cogvx.parallel.plan import Degrees
from cogvx.parallel.workers import ParallelVideoModel, WorkerError
from tests.parallel.ranks import RANK_1_FAULT, fox_request, ranks_fail_in_turn
from tests.support.faulty_rank import FAULT, rank_1_fails_first_warm_up

# Split runs sum in other orders (shards, batch of one): the frames may differ by a level or two.
# Measured on AMD Zen 4: Ulysses max 1 level (off) / identical (balanced); CFG split identical.
FRAME_TOLERANCE = 3


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
        split = pool.generate(fox_request(fast_mode=mode))
        alone = single.generate(fox_request(fast_mode=mode))
        assert split.frames.shape == alone.frames.shape == (9, 32, 48, 3)
        assert split.seed == alone.seed == 3
        assert _max_diff(split.frames, alone.frames) <= FRAME_TOLERANCE
    again = pool.generate(fox_request(fast_mode="balanced"))
    assert np.array_equal(again.frames, split.frames)  # same seed, same split: same frames
    text = "\n".join(pool.lines)
    assert "parallel: 2 workers ready" in text and "seed: 3" in text  # rank 0's logs relayed
    assert "attention computed" in text


def test_blank_seed_is_drawn_once_for_every_rank(pool, single):
    blank = pool.generate(fox_request(seed=None, num_inference_steps=2))
    alone = single.generate(fox_request(seed=blank.seed, num_inference_steps=2))
    assert _max_diff(blank.frames, alone.frames) <= FRAME_TOLERANCE  # the logged seed reproduces


def test_a_lora_is_downloaded_once_for_every_rank(pool, single, tmp_path):
    """The predictor fetches it; both ranks load it from the cache; the split run with the LoRA
    matches the single-process run with it, and differs from the base model."""
    from tests.support.loras import save_diffusers_lora
    from tests.support.weights_server import WeightsServer

    lora = save_diffusers_lora(tmp_path / "style.safetensors")
    with WeightsServer({"/style.safetensors": lora}) as server:
        url = server.url("/style.safetensors")
        base = pool.generate(fox_request())
        with_lora = pool.generate(fox_request(lora_url=url))
        again = pool.generate(fox_request(lora_url=url, lora_scale=0.5))
        assert server.count("/style.safetensors") == 1
        alone = single.generate(fox_request(lora_url=url))
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
    assert model.generate(fox_request()).frames.shape == (9, 32, 48, 3) and len(calls) > 0
    calls.clear()
    model.decode = False
    result = model.generate(fox_request())
    assert result.frames.shape == (0, 32, 48, 3) and result.seed == 3 and calls == []


def test_cfg_split_matches_and_turns_the_step_caches_off(folder, single):
    lines: list[str] = []
    model = ParallelVideoModel.start("t2v-5b", str(folder), Degrees(cfg=2), "cpu", lines.append)
    try:
        split = model.generate(fox_request(fast_mode="balanced"))
        alone = single.generate(fox_request(fast_mode="off"))
        assert _max_diff(split.frames, alone.frames) <= FRAME_TOLERANCE
        assert any("fast_mode=balanced runs as off" in line for line in lines)
        one_pass = model.generate(fox_request(guidance_scale=1.0))  # batch of one: not split
        assert one_pass.frames.shape == (9, 32, 48, 3)
    finally:
        model.close()
    assert not any(p.is_alive() for p in model.procs)


def test_an_input_error_on_the_ranks_reaches_the_caller_and_the_pool_keeps_serving(pool):
    with pytest.raises(InputError, match="num_frames"):
        pool.generate(fox_request(num_frames=10))
    assert pool.generate(fox_request(num_inference_steps=1)).frames.shape == (9, 32, 48, 3)


class _Cancel(BaseException):
    """What coglet raises in the run thread (its CancelationException is a BaseException)."""


def _long_run_started(pool) -> tuple[threading.Thread, dict]:
    """A 100-step request in a thread (its exception lands in the dict), once rank 0 denoises."""
    outcome: dict = {}
    before = len(pool.lines)

    def run() -> None:
        try:
            pool.generate(fox_request(num_inference_steps=100))
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
    assert pool.generate(fox_request(num_inference_steps=1)).frames.shape == (9, 32, 48, 3)


def test_a_rank_that_dies_fails_the_request_and_the_pool_restarts(pool):
    thread, outcome = _long_run_started(pool)
    old = list(pool.procs)
    old[1].kill()
    thread.join(300)
    assert isinstance(outcome.get("exc"), WorkerError), outcome
    assert "rank" in str(outcome["exc"])
    assert not any(p.is_alive() for p in old)  # the survivor was stopped too
    result = pool.generate(fox_request(num_inference_steps=1))  # a new pool
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
        split = model.generate(fox_request())
        alone = single.generate(fox_request())
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


def test_a_rank_that_died_between_requests_is_restarted_before_the_next_one(pool):
    pool.generate(fox_request(num_inference_steps=1))
    old = list(pool.procs)
    old[1].kill()
    old[1].join()
    result = pool.generate(fox_request(num_inference_steps=1))  # not a BrokenPipeError
    assert result.frames.shape == (9, 32, 48, 3)
    assert len(pool.procs) == 2 and all(p not in old for p in pool.procs)
    assert not any(p.is_alive() for p in old)
    text = "\n".join(pool.lines)
    assert "a worker died between requests (rank 1: killed by SIGKILL)" in text


def test_a_rank_that_cannot_be_reached_fails_clearly_and_the_next_request_restarts(pool):
    """A rank that dies after the liveness check: its broken pipe becomes a WorkerError."""
    pool.generate(fox_request(num_inference_steps=1))
    old = list(pool.procs)
    old[1].kill()
    old[1].join()
    with pytest.raises(WorkerError, match=r"rank 1 could not be reached \(BrokenPipeError"):
        pool._send_all(("stop",))
    assert pool.procs == [] and not any(p.is_alive() for p in old)
    assert pool.generate(fox_request(num_inference_steps=1)).frames.shape == (9, 32, 48, 3)


class _CancelBetweenSends:
    """Rank 1's pipe: the first "run" sent to it raises a cancel in `thread` first (as coglet
    would, while the request's sends are under way), then is sent."""

    def __init__(self, conn, thread: int) -> None:
        self.conn, self.thread, self.armed = conn, thread, True

    def send(self, message) -> None:
        if self.armed and message[0] == "run":
            self.armed = False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.thread), ctypes.py_object(_Cancel)
            )
            for _ in range(10000):  # the cancel lands here when this runs in `thread`
                pass
        self.conn.send(message)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_a_cancel_between_the_ranks_sends_leaves_them_in_step(pool):
    """Every rank gets the canceled request (or none does), so the next request's frames are
    its own, not a mix of two requests."""
    clean = pool.generate(fox_request(seed=11))
    inner = pool.conns[1]
    pool.conns[1] = _CancelBetweenSends(inner, threading.get_ident())
    try:
        with pytest.raises(_Cancel):
            pool.generate(fox_request(prompt="a blue whale swims", seed=5))  # as many steps
    finally:
        pool.conns[1] = inner
    after = pool.generate(fox_request(seed=11))
    assert np.array_equal(after.frames, clean.frames)
    assert len(pool.procs) == 2 and all(p.is_alive() for p in pool.procs)


def test_two_cancels_in_a_row_cancel_only_thatfox_request(pool):
    thread, outcome = _long_run_started(pool)
    procs = list(pool.procs)

    def cancel() -> None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(_Cancel)
        )

    cancel()
    deadline = time.monotonic() + 60
    while not pool.cancel_requested:  # the first cancel is being handled: the ranks stop
        assert time.monotonic() < deadline
        time.sleep(0.001)
    cancel()  # lands in the wait for the ranks' answers
    thread.join(120)
    assert isinstance(outcome.get("exc"), _Cancel)
    for _ in range(2):  # later requests are not canceled
        assert pool.generate(fox_request(num_inference_steps=1)).frames.shape == (9, 32, 48, 3)
    assert pool.procs == procs  # no restart was needed


def test_a_killed_rank_is_reported_with_its_signal(pool):
    thread, outcome = _long_run_started(pool)
    pool.procs[1].kill()
    thread.join(300)
    assert isinstance(outcome.get("exc"), WorkerError), outcome
    assert "rank 1: worker process exited (killed by SIGKILL)" in str(outcome["exc"])


def _listening_addresses(pid: int) -> list[str]:
    """The local addresses (hex, as in /proc/net/tcp*) of the TCP sockets `pid` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
                found.append(fields[1].rsplit(":", 1)[0])
    return found


def _address(hexed: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp* writes it: 32-bit words, each in this machine's order."""
    raw = bytes.fromhex(hexed)
    words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
    return ipaddress.ip_address(b"".join(w[::-1] for w in words))


def test_the_ranks_meet_in_a_private_folder_not_on_a_public_socket(pool):
    """No rendezvous socket, and gloo's own sockets listen on loopback only."""
    pool.generate(fox_request(num_inference_steps=1))  # a live pool
    for proc in pool.procs:
        addresses = [_address(a) for a in _listening_addresses(proc.pid)]
        assert addresses and all(a.is_loopback for a in addresses), (proc.pid, addresses)
    folder = Path(pool._rendezvous)
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    procs = list(pool.procs)
    pool.close()
    assert not folder.exists()
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_ranks_started_from_a_thread_that_ends_keep_running(folder):
    """PR_SET_PDEATHSIG would end them with that thread; they watch the process instead."""
    box: dict = {}

    def setup() -> None:
        box["pool"] = ParallelVideoModel.start(
            "t2v-5b", str(folder), Degrees(ulysses=2), "cpu", lambda _: None
        )

    thread = threading.Thread(target=setup)
    thread.start()
    thread.join()
    model = box["pool"]
    try:
        procs = list(model.procs)
        assert model.generate(fox_request(num_inference_steps=1)).frames.shape == (9, 32, 48, 3)
        assert model.procs == procs and all(p.exitcode is None for p in procs)
    finally:
        model.close()


def test_the_first_failure_is_reported_and_only_input_errors_count_as_input(folder, tmp_path):
    """Rank 1 fails first with a plain ValueError (a bug, not an input: WorkerError), rank 0
    after it: rank 1's error is the one reported."""
    model = ParallelVideoModel.start(
        "t2v-5b", str(folder), Degrees(ulysses=2), "cpu", lambda _: None,
        target=ranks_fail_in_turn,
    )  # fmt: skip
    try:
        with pytest.raises(WorkerError, match=f"^rank 1: ValueError: {RANK_1_FAULT}$"):
            model.generate(fox_request(prompt=str(tmp_path / "rank-1-replied")))
    finally:
        model.close()


def test_ring_on_an_attention_backend_without_log_sum_exp_is_refused_at_setup(folder):
    with pytest.raises(SetupError, match=r"ring=2: Ring attention needs .* not native"):
        ParallelVideoModel.start("t2v-5b", str(folder), Degrees(ring=2), "cpu", lambda _: None)


def test_a_ulysses_degree_diffusers_cannot_pad_is_refused_before_any_collective(single):
    """The tiny transformer's 2 heads over 3 ranks: diffusers' padding would assert per step."""
    from cogvx.parallel.engine import enable_parallel

    with pytest.raises(SetupError, match="ulysses=3: .* 2 attention heads"):
        enable_parallel(single.pipe.transformer, Degrees(ulysses=3), "cpu")
