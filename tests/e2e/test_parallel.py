"""Multi-GPU generation through the real server: COGVX_PARALLEL=ulysses=2 on CPU, so the T2V
predictor inside coglet starts 2 worker processes (gloo) and owns them."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.support.coglet_harness import CogletServer
from tests.support.e2e import STEPS, predict_failed, predict_ok, runner_env
from tests.support.loras import save_diffusers_lora
from tests.support.media import assert_same_file, ffprobe

BASE = {"prompt": "a lighthouse in a storm", "num_frames": 9, "seed": 6}


@pytest.fixture(scope="module")
def server(weights_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    root = tmp / "loras"
    root.mkdir()
    wide = root / "wide.safetensors"  # attention 64 wide: not the tiny model's
    save_file({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
               "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4)},
              str(wide))  # fmt: skip
    weights_server.files["/par-wide.safetensors"] = wide
    weights_server.files["/par-style.safetensors"] = save_diffusers_lora(root / "s.safetensors")
    env = {**runner_env(tmp, weights_server.serve("t2v-5b")), "COGVX_PARALLEL": "ulysses=2"}
    srv = CogletServer("cog.yaml", env=env)
    try:
        assert srv.wait_ready(timeout=300)["status"] == "READY", srv.logs()
        srv.lora = {n: weights_server.url(f"/par-{n}.safetensors") for n in ("wide", "style")}  # type: ignore[attr-defined]
        yield srv
    finally:
        srv.stop()


def _worker_pids(server) -> list[int]:
    found = re.search(r"parallel: 2 workers ready \(pids (\d+), (\d+)\)", server.logs())
    assert found, server.logs()[-3000:]
    return [int(found.group(1)), int(found.group(2))]


def test_setup_starts_two_workers_and_logs_the_plan(server):
    logs = server.logs()
    assert "parallel: ulysses=2, ring=1, cfg=1 (2 ranks) (COGVX_PARALLEL=ulysses=2)" in logs
    assert all(Path(f"/proc/{pid}").exists() for pid in _worker_pids(server))


def test_same_seed_gives_the_same_file_through_two_ranks(server, tmp_path):
    a, body = predict_ok(server, tmp_path, "a.mp4", **BASE)
    b, _ = predict_ok(server, tmp_path, "b.mp4", **BASE)
    assert_same_file(a, b)
    info = ffprobe(a)
    assert info["frames"] == 9
    assert "seed: 6" in body["logs"] and f"{STEPS} steps" in body["logs"]  # rank 0's lines
    assert "attention computed" in body["logs"]


def test_fast_mode_fast_runs_as_balanced_and_says_so(server, tmp_path):
    _, body = predict_ok(server, tmp_path, "f.mp4", fast_mode="fast", **BASE)
    assert "fast_mode=fast runs as balanced across GPUs" in body["logs"]


def test_a_lora_error_on_the_ranks_fails_the_prediction_and_the_server_stays_ready(
    server, tmp_path
):
    error = predict_failed(server, lora_url=server.lora["wide"], **BASE)
    assert "has shape [4, 64]" in error, error
    _, body = predict_ok(server, tmp_path, "l.mp4", lora_url=server.lora["style"], **BASE)
    assert "lora" in body["logs"].lower()


def test_cancel_stops_the_ranks_and_the_next_prediction_runs(server, tmp_path):
    pids = _worker_pids(server)
    pred = server.predict_async({**BASE, "num_frames": 49, "num_inference_steps": 100})
    deadline = time.monotonic() + 60
    while not _lines(server, pred, "generating"):  # rank 0 is denoising
        assert time.monotonic() < deadline, server.logs()[-3000:]
        time.sleep(0.05)
    status, _ = server.cancel(pred)
    assert status == 200
    assert server.wait_idle(timeout=120)["status"] == "READY"
    assert not _lines(server, pred, "generated in")  # stopped before the end
    predict_ok(server, tmp_path, "after.mp4", **BASE)
    assert _worker_pids(server) == pids and all(Path(f"/proc/{p}").exists() for p in pids)


def test_stopping_the_server_ends_the_workers(server):
    pids = _worker_pids(server)
    server.stop()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def _lines(server, prediction_id: str, text: str) -> list[str]:
    return [x for x in server.logs().splitlines() if prediction_id in x and text in x]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"  # a zombie has ended
