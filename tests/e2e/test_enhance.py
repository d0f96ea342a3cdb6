"""Enhance end to end: tiny VEnhancer + fast-path weights packed, served over loopback HTTP,
installed by the real setup() under a real coglet; videos made with ffmpeg and sent as URLs.

Outputs are checked against the same models run in process on the same decoded frames.
"""

from __future__ import annotations

import subprocess

import av
import numpy as np
import pytest
import torch

from cogvx.errors import MissingWeightsError
from cogvx.fast.models import FastModels, fast_enhance
from cogvx.venhancer.pipeline import VEnhancer
from cogvx.video import read_frames, write_video
from cogvx.weights.install import install_weights
from tests.support.coglet_harness import CogletServer, save_output
from tests.support.media import ffprobe
from tests.support.weights_server import WeightsServer

CHEAP = {"size_policy": "exact", "solver_mode": "normal", "steps": 2, "guidance_scale": 1.0}


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        ["/usr/bin/ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True
    )


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _streams(path) -> list[str]:
    with av.open(str(path)) as c:
        return [s.type for s in c.streams]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """5 frames at 8 fps with an audio track; a 301-frame clip; a text file named .mp4."""
    d = tmp_path_factory.mktemp("enhance-media")
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=48x32:rate=8:duration=0.625",
        "-f", "lavfi", "-i", "sine=frequency=440:duration=0.625",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "10", "-pix_fmt", "yuv420p",
        "-c:a", "aac", str(d / "clip.mp4"),
    )  # fmt: skip
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=16x16:rate=100:duration=3.01",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(d / "long.mp4"),
    )  # fmt: skip
    (d / "notes.mp4").write_text("not a video\n" * 100)
    return d


@pytest.fixture(scope="module")
def http(tiny_tarballs, media):
    files = {"/enhance.tar": tiny_tarballs["enhance"]}
    files.update({f"/media/{p.name}": p for p in media.iterdir()})
    with WeightsServer(files) as server:
        yield server


@pytest.fixture(scope="module")
def server(http, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("enhance-server")
    env = {
        "COG_WEIGHTS": http.url("/enhance.tar") + "?X-Amz-Signature=secret",
        "COGVX_WEIGHTS_CACHE": str(tmp / "cache"),
        "COGVX_OUTPUT_DIR": str(tmp / "outputs"),
    }
    with CogletServer("cog.enhance.yaml", env=env) as srv:
        health = srv.wait_ready(timeout=300)
        assert health["status"] == "READY", srv.logs()
        yield srv


@pytest.fixture(scope="module")
def local(tiny_tarballs, tmp_path_factory):
    """The same tiny weights, installed here for the in-process reference runs."""
    return install_weights(
        tiny_tarballs["enhance"], tmp_path_factory.mktemp("enhance-local") / "w", log=print
    )


def _ok(server, http, tmp_path, name: str, **inputs):
    body_in = {"video": http.url("/media/clip.mp4"), **inputs}
    status, body = server.predict(body_in, timeout=300)
    assert status == 200 and body["status"] == "succeeded", (body, server.logs()[-3000:])
    return save_output(body["output"], tmp_path / name), body


def _failed(server, http, video: str, **inputs) -> str:
    status, body = server.predict({"video": http.url(f"/media/{video}"), **inputs})
    assert status == 200 and body["status"] == "failed", body
    assert server.wait_idle(timeout=30)["status"] == "READY"
    return body["error"]


def test_setup_installs_the_packed_weights(server):
    logs = server.health()["setup"]["logs"] + server.logs()
    assert "sha256 verified" in logs and "secret" not in logs
    assert "loaded VEnhancer (torch.float32)" in logs
    assert "Real-ESRGAN Compact x4" in logs and "device: cpu" in logs


def test_venhancer_output_equals_the_model_in_process(server, http, media, local, tmp_path):
    out, body = _ok(server, http, tmp_path, "v.mp4", prompt="a test card", seed=5, **CHEAP)
    info = ffprobe(out)
    assert (info["width"], info["height"], info["frames"], info["fps"]) == (96, 64, 9, 16.0)
    assert _streams(out) == ["video"]  # the input's audio track is dropped
    logs = body["logs"]
    assert "9 frames x 2 steps x 1 passes = 18 frame-evaluations" in logs
    assert "memory: RAM ~" in logs and "seed: 5" in logs
    assert body["metrics"]["video_output_count"] == 1
    assert body["metrics"]["video_output_duration_seconds"] == pytest.approx(9 / 16)

    ve = VEnhancer.from_folder(local / "venhancer", device="cpu", dtype=torch.float32)
    frames = read_frames(media / "clip.mp4", range(5))
    kw = dict(prompt="a test card", up_scale=2, target_fps=16, log=lambda _: None, **CHEAP)
    ref = ve.enhance(frames, 8.0, seed=5, **kw)
    other = ve.enhance(frames, 8.0, seed=6, **kw)
    assert np.abs(other.frames.astype(np.int16) - ref.frames).mean() > 10  # the seed matters
    # Random tiny weights make noise-like frames that H.264 (yuv420p) cannot keep: compare with
    # the reference frames through the same encoder (x264 is deterministic)
    expected = _decode(write_video(ref.frames, tmp_path / "ref.mp4", fps=16))
    assert np.array_equal(_decode(out), expected)


def test_fast_output_equals_the_models_in_process(server, http, media, local, tmp_path):
    inputs = {"method": "fast", "up_scale": 4, "target_fps": 30, "output_quality": 100}
    out, body = _ok(server, http, tmp_path, "f.webm", output_format="webm", **inputs)
    info = ffprobe(out)
    assert (info["width"], info["height"], info["frames"]) == (192, 128, 17)
    assert info["fps"] == 32.0 and info["codec"] == "vp9"
    assert "RIFE multiplies the frame rate by 1, 2, 4, 8 or 16; x4 gives 32 fps" in body["logs"]

    models = FastModels.from_folder(local / "fast", device="cpu")
    ref = fast_enhance(models, read_frames(media / "clip.mp4", range(5)), 4, 4, log=print)
    expected = write_video(ref, tmp_path / "ref.webm", fps=32, fmt="webm", quality=100)
    assert np.array_equal(_decode(out), _decode(expected))


def test_integer_inputs_as_integral_floats_equal_the_ints(server, http, tmp_path):
    """JSON 2.0 passes coglet's integer schema as a float; every int input must act as the int."""
    ints = {"steps": 2, "noise_aug": 200, "chunk_overlap": 8, "output_quality": 80, "seed": 5}
    floats = {key: float(value) for key, value in ints.items()}
    cheap = {k: v for k, v in CHEAP.items() if k != "steps"}
    a, body = _ok(server, http, tmp_path, "f.mp4", prompt="a test card", **cheap, **floats)
    b, _ = _ok(server, http, tmp_path, "i.mp4", prompt="a test card", **cheap, **ints)
    assert np.array_equal(_decode(a), _decode(b)) and "seed: 5\n" in body["logs"]


def test_bad_inputs_fail_with_the_reason(server, http):
    assert "notes.mp4: not a video file FFmpeg can read" in _failed(server, http, "notes.mp4")
    assert "long.mp4 has more than 300 frames" in _failed(server, http, "long.mp4", method="fast")
    error = _failed(server, http, "clip.mp4", target_fps=4)
    assert "target_fps=4 is below the input video's 8 fps" in error
    error = _failed(server, http, "clip.mp4", method="fast", up_scale=6)
    assert "up_scale=6 is not allowed on the fast path" in error
    error = _failed(server, http, "clip.mp4")  # the default size policy pads to 720x1280
    assert "at latent 122x184" in error and "on CPU at most 2000000" in error


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        ({"method": "slow"}, "method", "is not one of"),
        ({"up_scale": 9}, "up_scale", "greater than the maximum of 8"),
        ({"noise_aug": 0}, "noise_aug", "less than the minimum of 1"),
    ],
)
def test_schema_rejects_bad_values_with_422(server, http, inputs, field, message):
    status, body = server.predict({"video": http.url("/media/clip.mp4"), **inputs})
    assert status == 422, body
    detail = body["detail"][0]
    assert detail["loc"][-1] == field and message in detail["msg"]


def test_no_weights_says_how_to_build_them():
    """setup() without COG_WEIGHTS, in process (coglet's SETUP_FAILED path is tested with T2V)."""
    from predict_enhance.predict import Runner

    with pytest.raises(MissingWeightsError) as exc:
        Runner().setup(weights=None)
    message = str(exc.value)
    assert "tools/build_enhance_weights.py" in message and "tools/pack_weights.py" in message
    assert "COG_WEIGHTS" in message and "venhancer/unet/" in message
