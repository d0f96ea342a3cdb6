"""Enhance service pieces: frame-rate and size rules, caps, memory estimate, weights layout, the
fast path, and tools/build_enhance_weights.py from files in the original formats."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cogvx.dev.enhance import tiny_ifnet_state_dict, tiny_realesrgan_state_dict
from cogvx.dev.venhancer import tiny_text_encoder, tiny_tokenizer, tiny_vae
from cogvx.errors import CapacityError, EnhanceMemoryError, EnhanceSetupError
from cogvx.fast import caps
from cogvx.fast.models import FastModels, fast_enhance, fast_factor
from cogvx.fast.rife import ifnet_from_state_dict, interpolate
from cogvx.fast.upscale import upscale_frames, upscaler_from_state_dict
from cogvx.services import enhance_request
from cogvx.services.enhance import EnhanceService, find_enhance_root
from cogvx.services.enhance_request import Request, check_request, resolve_target_fps
from cogvx.venhancer import arith
from cogvx.venhancer.memory import WorkingSet, venhancer_working_set
from tests.support.media import ffprobe
from tests.support.shared_fixtures import fixture_dir
from tools.build_enhance_weights import main as build_enhance_weights

CHEAP = {"size_policy": "exact", "solver_mode": "normal", "steps": 1, "guidance_scale": 1.0}


def _clip(path, size="48x32", rate=8, seconds=0.625):
    subprocess.run(
        ["/usr/bin/ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size={size}:rate={rate}:duration={seconds}", "-c:v", "libx264", "-preset",
         "veryfast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return _clip(tmp_path_factory.mktemp("enhance-clip") / "clip.mp4")


@pytest.fixture(scope="module")
def fast_models():
    up = upscaler_from_state_dict(tiny_realesrgan_state_dict("compact", 4), device="cpu")
    return FastModels(up, ifnet_from_state_dict(tiny_ifnet_state_dict(), device="cpu"))


@pytest.mark.parametrize(
    ("in_fps", "target", "factor"),
    [(8, 16, 2), (8, 8, 1), (8, 30, 4), (8, 24, 2), (8, 25, 4), (16, 32, 2), (8, 200, 16)],
)
def test_fast_factor_is_the_nearest_power_of_two(in_fps, target, factor):
    assert fast_factor(in_fps, target) == factor  # 24/8 = 3: ties go to the smaller factor


def test_target_fps_defaults_to_twice_the_input_and_never_drops_it():
    assert resolve_target_fps(None, 8.0) == 16.0
    assert resolve_target_fps(8.0, 8.0) == 8.0
    with pytest.raises(ValueError, match=r"target_fps=12 is below the input video's 24 fps"):
        resolve_target_fps(12.0, 24.0)
    for in_fps in (200.0, 1e-4):  # blank: twice the input must still be an allowed target_fps
        with pytest.raises(ValueError, match=r"target_fps: left blank .* outside the allowed 1 to"):
            resolve_target_fps(None, in_fps)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("method", "slow", "method='slow' is not allowed"),
        ("up_scale", 0.5, "up_scale=0.5 is out of range"),
        ("noise_aug", 0, "noise_aug=0 is out of range"),
        ("precision", "fp8", "precision='fp8' is not allowed"),
        ("output_format", "avi", "output_format='avi' is not allowed"),
    ],
)
def test_bad_request_values_are_named(field, value, message):
    ok = dict(
        method="venhancer", prompt="", up_scale=2.0, target_fps=None, size_policy="original",
        noise_aug=200, solver_mode="fast", steps=15, guidance_scale=7.5, chunk_overlap=8,
        precision="fp16", seed=None, output_format="mp4", output_quality=80,
    )  # fmt: skip
    check_request(Request(**ok))
    with pytest.raises(ValueError, match=message):
        check_request(Request(**{**ok, field: value}))


def test_weights_root_is_found_inside_wrapping_folders(tmp_path):
    (tmp_path / "a" / "b" / "fast").mkdir(parents=True)
    assert find_enhance_root(tmp_path) == tmp_path / "a" / "b"
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnhanceSetupError, match=r"expected a venhancer/ and/or fast/ folder"):
        find_enhance_root(tmp_path / "empty")


def test_working_set_estimate_of_the_released_model():
    """49 frames 480x720 @ 8 fps -> x2, 16 fps (the recommended run) with the released widths."""
    plan = arith.make_plan(49, 8, 480, 720, 2, 16, 8)
    work = venhancer_working_set(plan, unet_width=320, vae_width=128, dtype_bytes=2)
    assert 5 < work.sample_gib < 12 and 8 < work.decode_gib < 20  # fits a 40/80 GB card
    longer = venhancer_working_set(arith.make_plan(97, 8, 480, 720, 2, 16, 8), 320, 128, 2)
    assert longer.decode_gib > work.decode_gib and longer.sample_gib == pytest.approx(
        work.sample_gib, rel=0.1
    )  # sampling runs in windows: its memory barely grows with length; the decode does
    assert "GiB working memory (estimate" in work.describe()


def test_fast_path_keeps_input_frames_and_matches_its_parts(fast_models):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    same = fast_enhance(fast_models, frames, up_scale=1, factor=2, log=print)
    assert same.shape == (5, 20, 30, 3) and np.array_equal(same[::2], frames)
    assert np.array_equal(same, interpolate(fast_models.rife, frames, 2))
    x4 = fast_enhance(fast_models, frames, up_scale=4, factor=1, log=print)
    assert np.array_equal(x4, upscale_frames(fast_models.upscaler, frames))
    x2 = fast_enhance(fast_models, frames, up_scale=2, factor=4, log=print)
    assert x2.shape == (9, 40, 60, 3)
    with pytest.raises(ValueError, match=r"up_scale=5 is not allowed on the fast path"):
        fast_enhance(fast_models, frames, up_scale=5, factor=1)


def test_fast_path_caps_the_real_esrgan_size_before_the_resize(fast_models):
    # 1.02 MP out is under the CPU cap, but x4 first makes 16 MP frames: refused before running
    with pytest.raises(
        ValueError, match=r"up_scale=1.01 runs Real-ESRGAN x4 on 1000x1000 frames, 16 MP"
    ):
        caps.check_fast_output(fast_models, 3, 1000, 1000, 1.01, 1, print)
    assert caps.check_fast_output(fast_models, 3, 300, 300, 1.01, 1, print) == (3, 304, 304)


def test_fast_path_out_of_gpu_memory_is_a_capacity_error(fast_models, monkeypatch):
    from cogvx.fast import upscale

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.9 GiB")

    monkeypatch.setattr(upscale, "upscale_tensor", out_of_memory)
    frames = np.zeros((2, 20, 30, 3), np.uint8)
    with pytest.raises(CapacityError, match=r"out of memory on the fast path \(2 frames 30x20"):
        fast_enhance(fast_models, frames, up_scale=2, factor=1)


def test_prompt_note_says_what_is_cut():
    tok = tiny_tokenizer()  # one token per character
    assert "quality suffix is" in enhance_request.prompt_note(tok, "a cat")
    assert "end of the prompt and all of the quality suffix" in enhance_request.prompt_note(
        tok, "a" * 90
    )


def test_input_caps_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"tiny.mp4 is 8x8; both sides must be >= 16"):
        enhance_request.probe_input(_clip(tmp_path / "tiny.mp4", size="8x8"))
    with pytest.raises(ValueError, match=r"on CPU at most 97"):
        caps.check_output_frames(98, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"at most 640 are made"):
        caps.check_output_frames(641, torch.device("cuda"))


@pytest.fixture(scope="module")
def original_files(tmp_path_factory):
    """Inputs in the formats the authors release: original VEnhancer checkpoint (the golden tiny
    one), SD-2.1 / SVD style folders, a Real-ESRGAN .pth in params_ema, RIFE's DataParallel pkl."""
    d = tmp_path_factory.mktemp("enhance-originals")
    ckpt = d / "venhancer_v2.safetensors"
    shutil.copy(fixture_dir("venhancer") / "unet" / "model.safetensors", ckpt)
    tok = tiny_tokenizer()
    tok.save_pretrained(d / "sd21" / "tokenizer")
    text = tiny_text_encoder(len(tok), layers=1, hidden=1024)  # the fixture's context_dim
    text.save_pretrained(d / "sd21" / "text_encoder")
    tiny_vae().save_pretrained(d / "svd" / "vae")
    torch.save({"params_ema": tiny_realesrgan_state_dict("rrdb", 2, depth=1)}, d / "esrgan.pth")
    rife = {f"module.{k}": v for k, v in tiny_ifnet_state_dict().items()}
    torch.save(rife, d / "flownet.pkl")
    return d


def test_build_tool_makes_a_folder_the_service_runs(original_files, clip, tmp_path, monkeypatch):
    d, out = original_files, tmp_path / "built"
    args = ["--venhancer", str(d / "venhancer_v2.safetensors"), "--sd21", str(d / "sd21")]
    args += ["--svd", str(d / "svd"), "--realesrgan", str(d / "esrgan.pth")]
    args += ["--rife", str(d / "flownet.pkl"), "--out", str(out), "--dtype", "float32"]
    assert build_enhance_weights(args) == 0
    assert (out / "fast" / "realesrgan.safetensors").is_file()
    assert (out / "venhancer" / "controlnet" / "config.json").is_file()
    monkeypatch.setenv("COGVX_OUTPUT_DIR", str(tmp_path / "outputs"))
    lines: list[str] = []
    service = EnhanceService(str(out), log=lines.append)
    assert service.fast.upscaler.scale == 2 and service.venhancer is not None
    fast = ffprobe(service.run(video=clip, method="fast", up_scale=2))
    assert (fast["width"], fast["height"], fast["frames"], fast["fps"]) == (96, 64, 9, 16.0)
    out_ve = service.run(video=clip, up_scale=1.5, target_fps=8, seed=1, **CHEAP)
    ve = ffprobe(out_ve)
    assert (ve["width"], ve["height"], ve["frames"], ve["fps"]) == (72, 48, 5, 8.0)
    assert any("5 frames x 1 steps x 1 passes" in line for line in lines)


def test_build_tool_needs_whole_groups(original_files, tmp_path):
    with pytest.raises(SystemExit):
        build_enhance_weights(["--venhancer", "x.pt", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        build_enhance_weights(["--rife", str(original_files / "flownet.pkl"), "--out", "o"])


def test_fast_only_weights_refuse_venhancer_and_memory_checks_refuse(tmp_path, clip, monkeypatch):
    root = tmp_path / "w" / "fast"
    root.mkdir(parents=True)
    save_file(tiny_realesrgan_state_dict("compact", 4), str(root / "realesrgan.safetensors"))
    save_file(tiny_ifnet_state_dict(), str(root / "flownet.safetensors"))
    monkeypatch.setenv("COGVX_OUTPUT_DIR", str(tmp_path / "outputs"))
    service = EnhanceService(str(tmp_path / "w"), log=print)
    with pytest.raises(ValueError, match=r"method=venhancer is not available"):
        service.run(video=clip)
    with pytest.raises(EnhanceMemoryError, match=r"needs ~1048576.0 GiB working memory"):
        service._check_memory(WorkingSet(0.0, 2.0**20, 0.0), 0.0)
    with pytest.raises(EnhanceMemoryError, match=r"needs 4096 GiB of frames in RAM, but only"):
        caps.check_ram(4096.0, "4096 GiB of frames")


def test_generators_output_options_use_the_fast_path(tmp_path, monkeypatch):
    """T2V with COGVX_FAST_WEIGHTS: upscale x2 + RIFE x2; without it the options are refused
    before anything is generated."""
    from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, save_tiny_weights
    from cogvx.services.video import VideoService

    folder = save_tiny_weights("t2v-5b", tmp_path / "t2v")
    fast = tmp_path / "fast-w" / "fast"
    fast.mkdir(parents=True)
    save_file(tiny_realesrgan_state_dict("compact", 4), str(fast / "realesrgan.safetensors"))
    save_file(tiny_ifnet_state_dict(), str(fast / "flownet.safetensors"))
    monkeypatch.setenv("COGVX_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("COGVX_WEIGHTS_CACHE", str(tmp_path / "cache"))
    kw = dict(
        prompt="a cat", negative_prompt="", num_frames=9, num_inference_steps=1,
        guidance_scale=1.0, use_dynamic_cfg=False, seed=1, fps=8, output_format="mp4",
        output_quality=80,
    )  # fmt: skip
    lines: list[str] = []
    plain = VideoService("t2v-5b", str(folder), log=lines.append)
    assert plain.fast is None
    with pytest.raises(ValueError, match=r"upscale and interpolate needs the fast-path weights"):
        plain.run(**kw, upscale=2, interpolate=True)
    assert not any(line.startswith("generating") for line in lines)

    monkeypatch.setenv("COGVX_FAST_WEIGHTS", str(tmp_path / "fast-w"))
    service = VideoService("t2v-5b", str(folder), log=lines.append)
    info = ffprobe(service.run(**kw, upscale=2, interpolate=True))
    assert (info["width"], info["height"]) == (2 * TINY_WIDTH, 2 * TINY_HEIGHT)
    assert (info["frames"], info["fps"]) == (17, 16.0)
    assert any("fast: RIFE x2 over 8 frame pairs -> 17 frames" in line for line in lines)
    with pytest.raises(ValueError, match=r"upscale=3 is not allowed; choose one of \[1, 2, 4\]"):
        service.run(**kw, upscale=3)


def test_a_blank_target_fps_keeps_a_gif_at_or_under_50_fps():
    lines: list[str] = []
    assert resolve_target_fps(None, 25.0, "gif", lines.append) == 50.0 and lines == []
    assert resolve_target_fps(None, 30.0, "gif", lines.append) == 30.0
    assert lines == [
        "target_fps is blank and output_format=gif: twice the input's 30 fps is over the 50 fps "
        "a GIF plays, so the output keeps 30 fps"
    ]
    assert resolve_target_fps(None, 30.0, "mp4", lines.append) == 60.0
    with pytest.raises(ValueError, match=r"the input video's 60 fps gives 60 fps, but output_"):
        resolve_target_fps(None, 60.0, "gif", lines.append)


@pytest.fixture(scope="module")
def full_service(tmp_path_factory):
    """The enhance service over tiny VEnhancer + fast-path weights, and clips at 8 and 30 fps."""
    from cogvx.dev.venhancer import save_tiny_venhancer

    tmp = tmp_path_factory.mktemp("enhance-full")
    (tmp / "w" / "fast").mkdir(parents=True)
    save_file(tiny_realesrgan_state_dict("compact", 4), str(tmp / "w/fast/realesrgan.safetensors"))
    save_file(tiny_ifnet_state_dict(), str(tmp / "w" / "fast" / "flownet.safetensors"))
    save_tiny_venhancer(tmp / "w" / "venhancer")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COGVX_OUTPUT_DIR", str(tmp / "outputs"))
        lines: list[str] = []
        service = EnhanceService(str(tmp / "w"), log=lines.append)
        service.lines = lines  # type: ignore[attr-defined]
        service.clip8 = _clip(tmp / "c8.mp4")  # type: ignore[attr-defined]
        service.clip30 = _clip(tmp / "c30.mp4", rate=30, seconds=0.3)  # type: ignore[attr-defined]
        yield service


def _refused_before_reading(service, message: str, **inputs) -> None:
    before = len(service.lines)
    with pytest.raises(ValueError, match=message):
        service.run(**inputs)
    assert not any(line.startswith("read ") for line in service.lines[before:])


def test_an_enhanced_gif_never_plays_over_50_fps(full_service):
    svc = full_service
    before = len(svc.lines)
    out = svc.run(video=svc.clip30, method="fast", up_scale=1, output_format="gif")
    with Image.open(out) as im:  # blank: twice 30 fps would be 60 (delays of 1 and 2 / 100 s)
        delays = [im.seek(i) or im.info["duration"] for i in range(im.n_frames)]
    assert len(delays) == 9 and set(delays) == {30, 40}  # 30 fps: 3.33 / 100 s a frame
    assert any("so the output keeps 30 fps" in line for line in svc.lines[before:])
    _refused_before_reading(
        svc, r"target_fps=60 on this 30 fps video gives 60 fps, but output_format=gif plays at "
        r"most 50 fps .*: set target_fps to at most 30, or choose output_format mp4 or webm",
        video=svc.clip30, method="fast", up_scale=1, target_fps=60, output_format="gif",
    )  # fmt: skip
    _refused_before_reading(  # VEnhancer makes whole multiples: 8 fps x 7; x6 = 48 fits
        svc, r"target_fps=56 on this 8 fps video gives 56 fps, .* set target_fps to at most 48,",
        video=svc.clip8, target_fps=56, output_format="gif", **CHEAP,
    )  # fmt: skip
    _refused_before_reading(  # round(45 / 30) = 2: 60 fps
        svc, r"target_fps=45 on this 30 fps video gives 60 fps",
        video=svc.clip30, target_fps=45, output_format="gif", **CHEAP,
    )  # fmt: skip


class _Recording:
    """The real tokenizer, noting the longest text it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, text, *args, **kwargs):
        self.longest = max(
            self.longest, *(len(t) for t in ([text] if isinstance(text, str) else text))
        )
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_megabyte_prompt_is_cut_before_it_is_tokenized(full_service, monkeypatch):
    from cogvx.checks import PROMPT_CHARS
    from cogvx.venhancer.text import POSITIVE_PROMPT

    svc = full_service
    recording = _Recording(svc.venhancer.tokenizer)
    monkeypatch.setattr(svc.venhancer, "tokenizer", recording)
    huge = "a cat on a red sofa " * 50_000  # 1 MB
    before = len(svc.lines)
    run = dict(video=svc.clip8, up_scale=1.5, target_fps=8, seed=1, **CHEAP)
    a = svc.run(prompt=huge, **run).read_bytes()
    assert (
        f"prompt is {len(huge.strip())} characters; the first 19999 are tokenized"
        in (svc.lines[before:])
    )
    assert recording.longest <= PROMPT_CHARS + len(POSITIVE_PROMPT) + 2
    # the tiny tokenizer reads one character per token, 75 of them: the cut changes nothing
    assert a == svc.run(prompt=huge[:200], **run).read_bytes()


@pytest.mark.parametrize("method", ["venhancer", "fast"])
def test_a_prompt_with_a_lone_surrogate_is_refused_first(full_service, method):
    before = len(full_service.lines)
    with pytest.raises(ValueError, match=r"prompt holds an invalid character at position 6"):
        full_service.run(video=full_service.clip8, method=method, prompt="a cat \ud800")
    assert full_service.lines[before:] == []
