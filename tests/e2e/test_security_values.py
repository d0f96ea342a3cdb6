"""Hostile values through the real server: integral floats, out-of-range seeds, huge text.

One tiny t2v-5b server (cog.yaml, weights over loopback HTTP, the schema coglet validates with).
Each case ends with the server READY again. See README "Security / Input values and logs".
"""

from __future__ import annotations

import pytest

from tests.support.coglet_harness import CogletServer, save_output
from tests.support.media import assert_same_file, ffprobe

STEPS = 2
MB_PROMPT = "a cat walks on the grass " * 42_000  # ~1 MB
LOG_BOUND = 4000  # bytes of a prediction's logs (the server log wraps each line in JSON)
EXTRA_BOUND = 3000  # bytes two megabyte prompts may add over a short prompt's run


@pytest.fixture(scope="module")
def server(weights_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security-values")
    env = {
        "COG_WEIGHTS": weights_server.serve("t2v-5b"),
        "COGVX_WEIGHTS_CACHE": str(tmp / "cache"),
        "COGVX_OUTPUT_DIR": str(tmp / "outputs"),
    }
    with CogletServer("cog.yaml", env=env) as srv:
        health = srv.wait_ready(timeout=300)
        assert health["status"] == "READY", srv.logs()
        yield srv


def _predict(server, **inputs) -> tuple[int, dict]:
    status, body = server.predict(
        {"prompt": "a cat", "num_frames": 9, "num_inference_steps": STEPS, **inputs}, timeout=300
    )
    assert server.wait_idle(timeout=60)["status"] == "READY"
    return status, body


def _ok(server, tmp_path, name: str, **inputs):
    status, body = _predict(server, **inputs)
    assert status == 200 and body["status"] == "succeeded", (body, server.logs()[-3000:])
    return save_output(body["output"], tmp_path / name), body


def test_integral_float_seed_gives_the_same_file_as_the_int(server, tmp_path):
    a, body = _ok(server, tmp_path, "float.mp4", seed=7.0)
    b, _ = _ok(server, tmp_path, "int.mp4", seed=7)
    assert_same_file(a, b)
    assert "seed: 7\n" in body["logs"]


def test_largest_seed_works(server, tmp_path):
    _, body = _ok(server, tmp_path, "max.mp4", seed=2**32 - 1)
    assert "seed: 4294967295" in body["logs"]


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        (2**64, "is greater than the maximum of 4294967295"),
        (2**32, "4294967296 is greater than the maximum of 4294967295"),
        (-1, "-1 is less than the minimum of 0"),
        (-(2**63) - 1, "is less than the minimum of 0"),
        (1e30, "1e+30 is greater than the maximum of 4294967295"),
        (7.5, '7.5 is not of type "integer"'),
    ],
)
def test_bad_seeds_are_refused_naming_seed_and_the_range(server, seed, message):
    status, body = _predict(server, seed=seed)
    assert status == 422, body
    detail = body["detail"]
    assert [d["loc"] for d in detail] == [["body", "input", "seed"]], detail
    assert message in detail[0]["msg"]


def test_integer_inputs_as_integral_floats_give_the_same_file_as_ints(server, tmp_path):
    ints = {"num_frames": 9, "num_inference_steps": STEPS, "fps": 8, "output_quality": 80}
    floats = {key: float(value) for key, value in ints.items()}
    a, _ = _ok(server, tmp_path, "f.mp4", seed=3, upscale=1.0, **floats)
    b, _ = _ok(server, tmp_path, "i.mp4", seed=3, upscale=1, **ints)
    assert_same_file(a, b)
    info = ffprobe(a)
    assert (info["frames"], info["fps"]) == (9, 8.0)


def test_num_frames_49_0_makes_49_frames(server, tmp_path):
    video, _ = _ok(server, tmp_path, "49.mp4", num_frames=49.0, num_inference_steps=1, seed=1)
    assert ffprobe(video)["frames"] == 49


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"num_frames": 9.5}, "num_frames"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"fps": 8.5}, "fps"),
        ({"num_frames": True}, "num_frames"),
    ],
)
def test_non_integral_values_are_refused_naming_the_input(server, inputs, field):
    status, body = _predict(server, **inputs)
    assert status == 422, body
    assert {d["loc"][-1] for d in body["detail"]} == {field}, body


def _log_growth(server, tmp_path, name: str, **inputs) -> tuple[int, int, str]:
    """(bytes of the prediction's logs, bytes the server log grew by, the prediction's logs)."""
    before = len(server.logs().encode())
    _, body = _ok(server, tmp_path, name, **inputs)
    return len(body["logs"].encode()), len(server.logs().encode()) - before, body["logs"]


def test_megabyte_prompts_succeed_with_bounded_logs(server, tmp_path):
    short_logs, short_server, _ = _log_growth(server, tmp_path, "short.mp4", seed=5)
    mb_logs, mb_server, logs = _log_growth(
        server, tmp_path, "long.mp4", prompt=MB_PROMPT, negative_prompt=MB_PROMPT, seed=5
    )
    assert "prompt is" in logs and "reads the first 226" in logs  # our truncation line
    assert f"prompt is {len(MB_PROMPT.strip())} characters; the first 19999 are tokenized" in logs
    assert "negative_prompt is" in logs and "chars)" in logs  # diffusers' echo, clipped
    assert mb_logs < LOG_BOUND and mb_logs - short_logs < EXTRA_BOUND, logs[:3000]
    assert mb_server - short_server < EXTRA_BOUND, server.logs()[-3000:]
    assert mb_server < 2 * LOG_BOUND, server.logs()[-3000:]


def test_cutting_a_megabyte_prompt_keeps_the_tokens_the_model_reads(server, tmp_path):
    """The model reads 226 tokens (~800 characters here): 2,000 characters give the same file."""
    short = MB_PROMPT[:2000]
    a, _ = _ok(server, tmp_path, "a.mp4", prompt=MB_PROMPT, seed=3)
    b, _ = _ok(server, tmp_path, "b.mp4", prompt=short, seed=3)
    assert_same_file(a, b)


def test_megabyte_lora_url_fails_with_a_short_message(server):
    status, body = _predict(server, lora_url="https://example.invalid/" + "a" * 1_000_000)
    assert status == 200 and body["status"] == "failed", body
    assert "lora_url=" in body["error"] and "at most 4096 are accepted" in body["error"]
    assert len(body["error"]) < 1000, body["error"][:2000]
