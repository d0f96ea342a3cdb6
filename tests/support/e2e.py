"""Helpers shared by the end-to-end modules (tests/e2e/): the runner environment, inline file
inputs, predictions that must succeed or fail, and the input media they send."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.support.coglet_harness import save_output
from tests.support.shared_fixtures import fixture_dir

STEPS = 2  # denoising steps of every e2e prediction: the tiny models need no more


def runner_env(tmp: Path, url: str) -> dict[str, str]:
    """A video runner's environment: weights from `url`, its caches and outputs under `tmp`."""
    return {
        "COG_WEIGHTS": url,
        "COGVX_WEIGHTS_CACHE": str(tmp / "cache"),
        "COGVX_OUTPUT_DIR": str(tmp / "outputs"),
        "COGVX_LORA_CACHE": str(tmp / "loras"),
    }


def data_uri(data: bytes, mime: str) -> str:
    """A data: URI, the way a client sends a file input inline."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_uri(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return data_uri(buf.getvalue(), f"image/{fmt.lower()}")


def gradient(w: int, h: int, mode: str = "RGB") -> Image.Image:
    """A smooth test picture (not flat, so fitting mistakes would show)."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8)).convert(mode)


def make_video(path, seconds: float, fps: int = 30, size: str = "160x120") -> bytes:
    """A real H.264 clip from ffmpeg's test source."""
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc=size={size}:rate={fps}", "-t", str(seconds),
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return path.read_bytes()


def predict_ok(server, tmp_path, name: str, **inputs):
    """One successful prediction (waiting out coglet's short busy tail after the previous one)."""
    for _ in range(20):
        status, body = server.predict({"num_inference_steps": STEPS, **inputs}, timeout=300)
        if status != 409:
            break
        server.wait_idle(timeout=60)
    assert status == 200 and body["status"] == "succeeded", (body, server.logs()[-3000:])
    return save_output(body["output"], tmp_path / name), body


def predict_failed(server, **inputs) -> str:
    """The error of a prediction that must fail; the server must stay READY."""
    for _ in range(20):
        status, body = server.predict({"num_inference_steps": STEPS, **inputs}, timeout=300)
        if status != 409:
            break
        server.wait_idle(timeout=60)
    assert status == 200 and body["status"] == "failed", body
    assert server.wait_idle(timeout=60)["status"] == "READY"
    return body["error"]


CAPTION_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
CAPTION_FILES += ["special_tokens_map.json"]
CAPTION_VOCAB = 463  # ids 0..462 are the tiny tokenizer's; 128000+ are special


def tiny_caption_folder(dst: Path) -> Path:
    """The golden CogVLM2 fixture copied to `dst`, its LM head limited to the tokenizer's own
    ids, so greedy captions are real (random) text instead of ids that decode to ""."""
    src = fixture_dir("cogvlm2")
    dst.mkdir()
    for name in CAPTION_FILES:
        shutil.copy(src / name, dst / name)
    state = load_file(str(src / "model.safetensors"))
    head = state["lm_head.weight"].clone()
    head[CAPTION_VOCAB:] = 0
    state["lm_head.weight"] = head * 4
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst
