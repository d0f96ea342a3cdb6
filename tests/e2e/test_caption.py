"""Caption end to end: tiny CogVLM2 packed and served over HTTP -> real setup() -> real coglet.

The tiny model (`tiny_folder`, tests/e2e/conftest.py) is the golden fixture
(../shared/fixtures/cogvlm2) with one change: its LM head keeps only the tokenizer's 463 ids, so
greedy captions are real (random) text instead of ids that decode to "". Videos are sent as
URLs, as a client would: the committed clips of tests/data/video_read (with the original demo's
frames frozen beside them) and files made here.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from cogvx.cogvlm2 import CogVLM2Captioner
from cogvx.errors import MissingWeightsError
from cogvx.weights.pack import pack_folder
from tests.support.coglet_harness import CogletServer
from tests.support.video_reference import DATA, demo_frames
from tests.support.weights_server import WeightsServer

TOKENS = 6


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        ["/usr/bin/ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Input files: H.264 and VP9 clips, an audio-only file, a text file named .mp4."""
    d = tmp_path_factory.mktemp("caption-media")
    for name in ("h264.mp4", "vp9.webm"):  # the original demo's frames are frozen for these
        shutil.copy(DATA / name, d / name)
    src = ["-f", "lavfi", "-i", "testsrc2=size=128x96:rate=12:duration=4.5"]
    _ffmpeg(
        *src, "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(d / "clip.mp4")
    )
    _ffmpeg(
        *src, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", str(d / "clip.webm")
    )
    _ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(d / "tone.m4a")
    )
    (d / "notes.mp4").write_text("not a video\n" * 100)
    return d


@pytest.fixture(scope="module")
def http(tiny_folder, media, tmp_path_factory):
    """Loopback server for the packed weights and the input videos."""
    tar = pack_folder(tiny_folder, tmp_path_factory.mktemp("caption-tar") / "w.tar", log=print)
    files = {"/caption.tar": tar, **{f"/media/{p.name}": p for p in media.iterdir()}}
    with WeightsServer(files) as server:
        yield server


@pytest.fixture(scope="module")
def server(http, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caption-server")
    env = {
        "COG_WEIGHTS": http.url("/caption.tar") + "?X-Amz-Signature=secret",
        "COGVX_WEIGHTS_CACHE": str(tmp / "cache"),
    }
    with CogletServer("cog.caption.yaml", env=env) as srv:
        health = srv.wait_ready(timeout=300)
        assert health["status"] == "READY", srv.logs()
        yield srv


def _caption(server, http, video: str, **inputs) -> tuple[str, str]:
    body_in = {"video": http.url(f"/media/{video}"), "max_new_tokens": TOKENS, **inputs}
    server.wait_idle()  # coglet may answer a sync prediction a moment before freeing its slot
    status, body = server.predict(body_in, timeout=300)
    assert status == 200 and body["status"] == "succeeded", (body, server.logs()[-3000:])
    assert isinstance(body["output"], str)
    return body["output"], body["logs"]


def test_setup_fetches_and_verifies_the_packed_weights(server):
    # coglet 0.23.1 can file the last lines printed before setup() returns outside setup.logs
    # (a race on its side), so read the server's own log too.
    logs = server.health()["setup"]["logs"] + server.logs()
    assert "sha256 verified" in logs and "secret" not in logs
    assert "memory plan: device=cpu quantize=None" in logs
    assert "loaded THUDM/cogvlm2-llama3-caption" in logs


@pytest.mark.parametrize(("video", "strategy"), [("h264.mp4", "chat"), ("vp9.webm", "base")])
def test_caption_matches_the_model_on_the_original_demos_frames(
    server, http, tiny_folder, video, strategy
):
    text, logs = _caption(server, http, video, strategy=strategy, prompt="What happens?")
    _, frames = demo_frames(video, strategy)  # decord's frames, frozen
    cap = CogVLM2Captioner.from_folder(tiny_folder)
    expected = cap.caption(frames, "What happens?", strategy, max_new_tokens=TOKENS)
    assert text == expected and text  # greedy: the same words, and some words
    assert f"read {len(frames)} frames ('{strategy}')" in logs
    assert f"generated {TOKENS} tokens" in logs
    assert len(frames) == (8 if strategy == "chat" else 24)  # 7.5 s: seconds 0..7


def test_sampling_is_reproducible_by_seed(server, http):
    a, logs_a = _caption(server, http, "clip.mp4", temperature=1.0, top_p=0.9, seed=5)
    b, _ = _caption(server, http, "clip.mp4", temperature=1.0, top_p=0.9, seed=5)
    assert a == b and "seed: 5" in logs_a
    c, logs_c = _caption(server, http, "clip.mp4", temperature=1.0, top_p=0.9)
    used = int(re.search(r"seed: (\d+)", logs_c).group(1))
    d, _ = _caption(server, http, "clip.mp4", temperature=1.0, top_p=0.9, seed=used)
    assert c == d


def test_integral_float_inputs_equal_the_ints_and_the_seed_is_bounded(server, http):
    """JSON 6.0 / 5.0 pass coglet's integer schema as floats; they must act as 6 and 5."""
    sampled = {"temperature": 1.0, "top_p": 0.9}
    a, logs = _caption(server, http, "clip.mp4", max_new_tokens=float(TOKENS), seed=5.0, **sampled)
    b, _ = _caption(server, http, "clip.mp4", max_new_tokens=TOKENS, seed=5, **sampled)
    assert a == b and "seed: 5\n" in logs and f"generated {TOKENS} tokens" in logs
    server.wait_idle()
    status, body = server.predict({"video": http.url("/media/clip.mp4"), "seed": -1})
    assert status == 422 and "less than the minimum of 0" in body["detail"][0]["msg"], body


@pytest.mark.parametrize(
    ("video", "message"),
    [
        ("notes.mp4", "notes.mp4: not a video file FFmpeg can read"),
        ("tone.m4a", "tone.m4a: has no video stream (found: audio)"),
    ],
)
def test_bad_video_fails_clearly_and_server_stays_ready(server, http, video, message):
    server.wait_idle()
    status, body = server.predict({"video": http.url(f"/media/{video}")})
    assert status == 200 and body["status"] == "failed"
    assert message in body["error"]
    assert server.wait_idle(timeout=30)["status"] == "READY"  # BUSY for a moment, then READY


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        ({"strategy": "every"}, "strategy", "is not one of"),
        ({"max_new_tokens": 0}, "max_new_tokens", "less than the minimum of 1"),
        ({"temperature": 5}, "temperature", "greater than the maximum of 2"),
    ],
)
def test_schema_rejects_bad_values_with_422(server, http, inputs, field, message):
    server.wait_idle()
    status, body = server.predict({"video": http.url("/media/clip.mp4"), **inputs})
    assert status == 422, body
    detail = body["detail"][0]
    assert detail["loc"][-1] == field and message in detail["msg"]


def test_empty_prompt_fails_clearly(server, http):
    server.wait_idle()
    status, body = server.predict({"video": http.url("/media/clip.mp4"), "prompt": "  "})
    assert status == 200 and body["status"] == "failed"
    assert "prompt must not be empty" in body["error"]


def test_no_weights_says_how_to_build_them():
    """setup() without COG_WEIGHTS (coglet passes None); coglet's SETUP_FAILED path is tested
    with the T2V models, so this runs the Runner in-process (saves a server start)."""
    from predict_caption.predict import Runner

    with pytest.raises(MissingWeightsError) as exc:
        Runner().setup(weights=None)
    message = str(exc.value)
    assert "tools/pack_weights.py" in message and "COG_WEIGHTS" in message
    assert "(THUDM/cogvlm2-llama3-caption) has no public weight tarball" in message


def test_prompt_longer_than_the_model_positions_is_refused(tiny_folder, media):
    """In-process (the same service the Runner wraps): the tiny model has 2048 positions."""
    from cogvx.services.caption import CaptionService

    service = CaptionService(str(tiny_folder), log=lambda _: None)
    kwargs = dict(video=media / "clip.mp4", strategy="chat", temperature=0.0, top_p=1.0, seed=None)
    with pytest.raises(ValueError, match=r"prompt is too long: .* the model has 2048"):
        service.run(prompt="describe " * 3000, max_new_tokens=TOKENS, **kwargs)
    with pytest.raises(ValueError, match=r"max_new_tokens=2040 the sequence needs \d+ positions"):
        service.run(prompt="describe", max_new_tokens=2040, **kwargs)
    assert service.run(prompt="describe", max_new_tokens=2, **kwargs) is not None


@pytest.fixture(scope="module")
def batch_server(http, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caption-batch-server")
    env = {
        "COG_WEIGHTS": http.url("/caption.tar"),
        "COGVX_WEIGHTS_CACHE": str(tmp / "cache"),
        "COGVX_OUTPUT_DIR": str(tmp / "outputs"),
    }
    with CogletServer("cog.caption-batch.yaml", env=env) as srv:
        health = srv.wait_ready(timeout=300)
        assert health["status"] == "READY", srv.logs()
        yield srv


def test_batch_of_clips_returns_jsonl_in_order_with_error_rows(
    batch_server, tiny_folder, media, tmp_path
):
    import base64
    import io
    import json
    import zipfile

    from tests.support.coglet_harness import save_output

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("clip.mp4", "notes.mp4", "clip.webm", "tone.m4a", "h264.mp4"):
            zf.write(media / name, f"set/{name}")
        zf.writestr("../escape.mp4", (media / "clip.mp4").read_bytes())
    uri = "data:application/zip;base64," + base64.b64encode(buf.getvalue()).decode()
    status, body = batch_server.predict(
        {"videos": uri, "max_new_tokens": TOKENS, "batch_size": 2}, timeout=300
    )
    assert status == 200 and body["status"] == "succeeded", (body, batch_server.logs()[-3000:])
    rows = [json.loads(line) for line in save_output(body["output"], tmp_path / "c.jsonl")
            .read_text().splitlines()]  # fmt: skip
    names = ["set/clip.mp4", "set/notes.mp4", "set/clip.webm", "set/tone.m4a", "set/h264.mp4",
             "../escape.mp4"]  # fmt: skip
    assert [r["path"] for r in rows] == names
    assert [r["error"] is None for r in rows] == [True, False, True, False, True, True]
    assert all(r["caption"] for r in rows if r["error"] is None)
    assert rows[0]["caption"] == rows[5]["caption"]  # the same clip under two names
    assert "captioned 4 of 6 clips" in body["logs"]
    from cogvx.cogvlm2.captioner import DEFAULT_PROMPT
    from cogvx.services.caption import load_clip

    alone = CogVLM2Captioner.from_folder(tiny_folder).caption(
        load_clip(media / "clip.webm", "chat", print).frames, DEFAULT_PROMPT, "chat", TOKENS
    )
    assert rows[2]["caption"] == alone  # batched in the server = one clip in-process
    status, body = batch_server.predict({"videos": "/etc/passwd"}, timeout=60)
    assert status != 200 or body["status"] == "failed"
    assert batch_server.wait_idle(timeout=60)["status"] == "READY"


def test_batch_refuses_an_over_long_prompt_before_unpacking(batch_server, media):
    """A 1 MB prompt used to 'succeed' with one 1 MB error row per clip."""
    import base64
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            zf.write(media / "clip.mp4", f"clip{i}.mp4")
    uri = "data:application/zip;base64," + base64.b64encode(buf.getvalue()).decode()
    status, body = batch_server.predict(
        {"videos": uri, "prompt": "word " * 200_000, "max_new_tokens": TOKENS}, timeout=300
    )
    assert status == 200 and body["status"] == "failed", body
    assert "InputError: prompt is 999999 characters; at most 65536 are accepted" in body["error"]
    assert "videos:" not in (body.get("logs") or "")  # nothing was unpacked
    assert batch_server.wait_idle(timeout=60)["status"] == "READY"
