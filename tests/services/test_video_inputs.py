"""The video service with the tiny T2V model: GIF frame rates and thin-strip V2V inputs are
checked before anything is read or generated."""

from __future__ import annotations

import pytest
from PIL import Image
from safetensors.torch import save_file

from cogvx.dev.enhance import tiny_ifnet_state_dict, tiny_realesrgan_state_dict
from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, save_tiny_weights
from cogvx.errors import InputError
from cogvx.services.video import VideoService
from tests.support.e2e import make_video
from tests.support.media import ffprobe

RUN = dict(
    prompt="a cat", negative_prompt="", num_frames=9, num_inference_steps=1, guidance_scale=1.0,
    use_dynamic_cfg=False, seed=1, fps=8, output_format="mp4", output_quality=80,
)  # fmt: skip


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The tiny t2v-5b with the fast-path weights (interpolate is available)."""
    tmp = tmp_path_factory.mktemp("video-inputs")
    folder = save_tiny_weights("t2v-5b", tmp / "t2v")
    fast = tmp / "fast-w" / "fast"
    fast.mkdir(parents=True)
    save_file(tiny_realesrgan_state_dict("compact", 4), str(fast / "realesrgan.safetensors"))
    save_file(tiny_ifnet_state_dict(), str(fast / "flownet.safetensors"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COGVX_OUTPUT_DIR", str(tmp / "outputs"))
        mp.setenv("COGVX_WEIGHTS_CACHE", str(tmp / "cache"))
        mp.setenv("COGVX_FAST_WEIGHTS", str(tmp / "fast-w"))
        lines: list[str] = []
        svc = VideoService("t2v-5b", str(folder), log=lines.append)
        svc.lines = lines  # type: ignore[attr-defined]
        assert svc.fast is not None
        yield svc


def _refused_before_any_work(service, message: str, **inputs) -> None:
    before = len(service.lines)
    with pytest.raises(InputError, match=message):
        service.run(**{**RUN, **inputs})
    assert service.lines[before:] == []  # nothing read, generated or written


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"fps": 60}, r"fps=60 gives 60 fps, but output_format=gif plays at most 50 fps .*"
                      r"use fps up to 50, or choose output_format mp4 or webm"),
        ({"fps": 51}, r"fps=51 gives 51 fps"),
        ({"fps": 30, "interpolate": True},
         r"fps=30 with interpolate gives 60 fps, .* use fps up to 25"),
    ],
)  # fmt: skip
def test_a_gif_over_50_fps_is_refused_before_generating(service, inputs, message):
    _refused_before_any_work(service, message, output_format="gif", **inputs)


def test_a_50_fps_gif_has_delays_of_2_hundredths(service):
    out = service.run(**{**RUN, "fps": 25, "interpolate": True, "output_format": "gif"})
    with Image.open(out) as im:
        delays = []
        for i in range(im.n_frames):
            im.seek(i)
            delays.append(im.info["duration"])
    assert len(delays) == 17 and set(delays) == {20}
    assert service.run(**{**RUN, "fps": 60}).suffix == ".mp4"  # other formats keep 60


def test_a_thin_strip_video_is_cut_to_its_centre_first(service, tmp_path):
    clip = tmp_path / "strip.mp4"
    make_video(clip, 1.2, fps=8, size="384x12")  # covering 48x32 would mean 1024x32 frames
    before = len(service.lines)
    info = ffprobe(service.run(**{**RUN, "num_frames": None, "video": clip, "strength": 1.0}))
    assert (info["width"], info["height"], info["frames"]) == (TINY_WIDTH, TINY_HEIGHT, 9)
    read = next(line for line in service.lines[before:] if line.startswith("video: 384x12"))
    assert "resized to 48x32 from its centre 18x12 (of 384x12)" in read


def test_a_video_over_32_to_1_is_refused_before_generating(service, tmp_path):
    clip = tmp_path / "strip.mp4"
    make_video(clip, 1.2, fps=8, size="2000x16")
    _refused_before_any_work(
        service, r"strip.mp4: 2000x16 has an aspect ratio above 32:1; crop it first", video=clip
    )
