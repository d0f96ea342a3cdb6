"""Text-to-video end to end: tiny weights over HTTP → real setup() → real coglet → ffprobe."""

from __future__ import annotations

import json
import re

import pytest

from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH
from tests.support.coglet_harness import CogletServer, save_output
from tests.support.media import assert_different_video, assert_same_file, ffprobe, mp4_atoms

STEPS = 2


def _env(tmp_path, url: str) -> dict[str, str]:
    return {
        "COG_WEIGHTS": url,
        "COGVX_WEIGHTS_CACHE": str(tmp_path / "cache"),
        "COGVX_OUTPUT_DIR": str(tmp_path / "outputs"),
    }


@pytest.fixture(scope="module")
def server_5b(weights_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2v5b")
    url = weights_server.serve("t2v-5b") + "?X-Amz-Signature=secret"
    with CogletServer("cog.yaml", env=_env(tmp, url)) as server:
        health = server.wait_ready(timeout=300)
        assert health["status"] == "READY", server.logs()
        server.tmp = tmp  # type: ignore[attr-defined]
        yield server


def _ok(server, tmp_path, name: str, **inputs):
    status, body = server.predict({"num_inference_steps": STEPS, **inputs}, timeout=300)
    assert status == 200 and body["status"] == "succeeded", (body, server.logs()[-3000:])
    return save_output(body["output"], tmp_path / name), body


def test_default_model_writes_browser_ready_mp4(server_5b, tmp_path):
    # coglet can file the last lines setup() prints after setup.logs is closed: read both logs.
    logs = server_5b.health()["setup"]["logs"] + server_5b.logs()
    assert "sha256 verified" in logs
    assert "secret" not in logs
    assert "memory plan: device=cpu" in logs
    video, body = _ok(server_5b, tmp_path, "a.mp4", prompt="a cat on the dog", num_frames=9, seed=7)
    info = ffprobe(video)
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert (info["width"], info["height"]) == (TINY_WIDTH, TINY_HEIGHT)  # the folder's size
    assert (info["frames"], info["fps"]) == (9, 8.0)
    assert info["duration"] == pytest.approx(9 / 8, abs=0.01)
    atoms = mp4_atoms(video)
    assert atoms.index("moov") < atoms.index("mdat")
    assert "seed: 7" in body["logs"]
    assert body["metrics"]["video_output_count"] == 1
    assert body["metrics"]["video_output_duration_seconds"] == pytest.approx(9 / 8)


def test_seed_is_reproducible_and_random_seed_is_logged(server_5b, tmp_path):
    a, _ = _ok(server_5b, tmp_path, "a.mp4", prompt="a dog", num_frames=9, seed=11)
    b, _ = _ok(server_5b, tmp_path, "b.mp4", prompt="a dog", num_frames=9, seed=11)
    other, _ = _ok(server_5b, tmp_path, "o.mp4", prompt="a dog", num_frames=9, seed=12)
    assert_same_file(a, b)
    assert_different_video(a, other)
    c, body = _ok(server_5b, tmp_path, "c.mp4", prompt="a dog", num_frames=9)
    used = int(re.search(r"seed: (\d+)", body["logs"]).group(1))
    d, _ = _ok(server_5b, tmp_path, "d.mp4", prompt="a dog", num_frames=9, seed=used)
    assert_same_file(c, d)  # the logged seed reproduces the file


@pytest.mark.parametrize("fmt", ["webm", "gif"])
def test_same_seed_gives_the_same_webm_and_gif_byte_for_byte(server_5b, tmp_path, fmt):
    a, _ = _ok(server_5b, tmp_path, f"a.{fmt}", prompt="a dog", num_frames=9, seed=3,
               output_format=fmt)  # fmt: skip
    b, _ = _ok(server_5b, tmp_path, f"b.{fmt}", prompt="a dog", num_frames=9, seed=3,
               output_format=fmt)  # fmt: skip
    assert_same_file(a, b)


def test_older_outputs_are_deleted(server_5b, tmp_path):
    _ok(server_5b, tmp_path, "x.mp4", prompt="a cat", num_frames=9, seed=1)
    _ok(server_5b, tmp_path, "y.mp4", prompt="a cat", num_frames=9, seed=2)
    files = [p for p in (server_5b.tmp / "outputs").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].name.startswith("cogvideox-2-")


@pytest.mark.parametrize(("fmt", "codec"), [("webm", "vp9"), ("gif", "gif")])
def test_webm_and_gif(server_5b, tmp_path, fmt, codec):
    video, _ = _ok(
        server_5b, tmp_path, f"v.{fmt}", prompt="a cat", num_frames=17, output_format=fmt, fps=16
    )
    info = ffprobe(video)
    assert info["codec"] == codec and info["frames"] == 17


def test_long_prompt_is_truncated_with_a_log_line(server_5b, tmp_path):
    _, body = _ok(server_5b, tmp_path, "t.mp4", prompt="the cat and the dog " * 80, num_frames=9)
    assert re.search(r"prompt is \d+ T5 tokens; t2v-5b reads the first 226", body["logs"])


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        ({"num_frames": 10}, "num_frames", "10 is not one of [9,17,25,33,41,49]"),
        ({"num_inference_steps": 999}, "num_inference_steps", "greater than the maximum of 100"),
        ({"guidance_scale": "high"}, "guidance_scale", ""),
        ({"output_format": "avi"}, "output_format", "is not one of"),
        ({"output_quality": 0}, "output_quality", "less than the minimum of 1"),
    ],
)
def test_schema_rejects_bad_values_with_422(server_5b, inputs, field, message):
    status, body = server_5b.predict({"prompt": "a cat", **inputs})
    assert status == 422, body
    detail = body["detail"][0]
    assert detail["loc"][-1] == field and message in detail["msg"]
    assert server_5b.wait_idle(timeout=30)["status"] == "READY"


def test_empty_prompt_fails_clearly_and_server_stays_ready(server_5b, tmp_path):
    status, body = server_5b.predict({"prompt": "   ", "num_frames": 9})
    assert status == 200 and body["status"] == "failed"
    assert "prompt must not be empty" in body["error"]
    assert server_5b.wait_idle(timeout=30)["status"] == "READY"
    _ok(server_5b, tmp_path, "after.mp4", prompt="a cat", num_frames=9)


@pytest.mark.parametrize(
    ("config", "model", "frames", "fps"),
    [("cog.t2v-2b.yaml", "t2v-2b", 9, 8), ("cog.t2v-1.5.yaml", "t2v-1.5", 17, 16)],
)
def test_other_t2v_models(weights_server, tmp_path, config, model, frames, fps):
    env = _env(tmp_path, weights_server.serve(model))
    with CogletServer(config, env=env) as server:
        assert server.wait_ready(timeout=300)["status"] == "READY", server.logs()
        status, body = server.predict({"prompt": "a cat", "num_frames": 10})
        assert status == 422  # frame rule of the model
        video, _ = _ok(server, tmp_path, "m.mp4", prompt="a cat", num_frames=frames)
        info = ffprobe(video)
        assert (info["frames"], info["fps"]) == (frames, float(fps))


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/missing.tar", ["404", "not found"]),
        ("/forbidden.tar", ["403", "forbidden"]),
        ("/not-a-tar.tar", ["not a tar"]),
    ],
)
def test_bad_weights_url_fails_setup_naming_the_url(weights_server, tmp_path, path, words):
    url = weights_server.url(path) + "?token=hush"
    with CogletServer("cog.yaml", env=_env(tmp_path, url)) as server:
        health = server.wait_ready(timeout=300)
        assert health["status"] == "SETUP_FAILED"
        logs = health["setup"]["logs"]
        assert weights_server.url(path) in logs and "hush" not in logs
        for word in words:
            assert word.lower() in logs.lower(), logs[-2000:]
        status, _ = server.predict({"prompt": "a cat"})
        assert status == 503


def test_model_without_public_tarball_says_how_to_build_one(tmp_path):
    env = {"COGVX_WEIGHTS_CACHE": str(tmp_path / "cache")}
    with CogletServer("cog.t2v-2b.yaml", env=env) as server:
        health = server.wait_ready(timeout=300)
        assert health["status"] == "SETUP_FAILED"
        assert "tools/pack_weights.py" in health["setup"]["logs"]
        assert "COG_WEIGHTS" in health["setup"]["logs"]


def test_cancel_stops_a_long_run_and_server_stays_ready(server_5b, tmp_path):
    pid = server_5b.predict_async(
        {"prompt": "a cat", "num_frames": 49, "num_inference_steps": 100, "seed": 5}
    )
    # A cancel that lands before run() has started is lost by coglet: wait until it denoises.
    server_5b.wait_log(pid, "generating", timeout=60)
    status, _ = server_5b.cancel(pid)
    assert status == 200
    assert server_5b.wait_idle(timeout=300)["status"] == "READY"
    assert f'"Prediction cancelled","prediction_id":"{pid}"' in server_5b.logs()
    written = list((server_5b.tmp / "outputs").rglob("cogvideox-5-*"))
    assert written == []  # stopped before its video was encoded
    _ok(server_5b, tmp_path, "after-cancel.mp4", prompt="a cat", num_frames=9)


def test_fast_mode_per_request_through_the_server(server_5b, tmp_path):
    run = dict(prompt="a dog", num_frames=9, seed=4, num_inference_steps=12)
    off, body = _ok(server_5b, tmp_path, "off.mp4", fast_mode="off", **run)
    assert "fast_mode=off (none): 12 transformer calls for 12 steps" in body["logs"]
    default, body = _ok(server_5b, tmp_path, "default.mp4", **run)
    reused = re.search(r"fast_mode=balanced \(FasterCache\): .* \((\d+)% reused\)", body["logs"])
    assert reused and int(reused.group(1)) > 0, body["logs"]
    assert_different_video(off, default)  # the default skips work, so the pixels move
    fast, body = _ok(server_5b, tmp_path, "fast.mp4", fast_mode="fast", **run)
    assert "fast_mode=fast (FirstBlockCache)" in body["logs"]
    again, _ = _ok(server_5b, tmp_path, "off-again.mp4", fast_mode="off", **run)
    assert_same_file(off, again)  # off after the caches is the reference, byte for byte
    status, body = server_5b.predict({"prompt": "a dog", "fast_mode": "turbo"}, timeout=60)
    assert status == 422 and "fast_mode" in json.dumps(body), body
    assert server_5b.wait_idle(timeout=60)["status"] == "READY"


def test_extend_prompt_without_an_llm_fails_clearly(server_5b):
    status, body = server_5b.predict({"prompt": "a cat", "extend_prompt": True}, timeout=60)
    assert body["status"] == "failed" and "COGVX_PROMPT_WEIGHTS" in body["error"], body
    assert server_5b.wait_idle(timeout=60)["status"] == "READY"


def test_extend_prompt_through_the_server(weights_server, tmp_path):
    from cogvx.dev.llm import save_tiny_llm

    env = _env(tmp_path, weights_server.serve("t2v-5b"))
    env["COGVX_PROMPT_WEIGHTS"] = str(save_tiny_llm(tmp_path / "llm"))
    with CogletServer("cog.yaml", env=env) as server:
        assert server.wait_ready(timeout=300)["status"] == "READY", server.logs()
        _, body = _ok(server, tmp_path, "x.mp4", prompt="a cat", num_frames=9, seed=2,
                      extend_prompt=True)  # fmt: skip
        extended = re.search(r"extended prompt: (.+)", body["logs"])
        assert extended and extended.group(1).strip() not in ("", "a cat"), body["logs"]
