"""LLM -> FLUX -> CogVideoX image-to-video, in batch: N prompts, a first frame each, a video each.

Stages run one model at a time (each freed before the next loads, as the seed's script does):
all prompts, then all first frames, then all videos. `manifest.json` in the output folder
records the settings and every finished item's prompt, image, video and seeds, rewritten after
each step, so a rerun skips what is done (a file that is missing is made again). It holds only
what the seed and inputs decide (the same run writes the same bytes); the seconds each stage
took go to `timings.json` beside it.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cogvx.log import log as log_line

Log = Callable[[str], None]

MANIFEST = "manifest.json"
TIMINGS = "timings.json"
IDEA_PROMPT = (
    "Write one prompt for a text-to-video model about this topic: {topic}. Idea number {n}: make "
    "it different from a generic take. One paragraph of at most {words} words describing what a "
    "camera sees: subject, action, setting, light, camera motion. Answer with the prompt only."
)


@dataclass
class Item:
    """One video of the batch (a manifest entry; `seconds` is kept in timings.json)."""

    index: int
    prompt: str = ""
    prompt_seed: int = 0
    image: str | None = None
    image_seed: int = 0
    video: str | None = None
    video_seed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Settings:
    """What the batch makes (the CLI's arguments)."""

    num_videos: int
    topic: str = "nature"
    prompts: list[str] | None = None  # given prompts: no LLM stage
    words: int = 120
    seed: int = 0
    image_steps: int = 28
    image_guidance: float = 3.5
    video_steps: int = 50
    video_model: str = "i2v-5b"
    fps: int = 8
    size: tuple[int, int] = (720, 480)  # first frames (width, height)


# Settings the CLI takes as an option of the same name; messages name those as the option.
_OPTIONS = {"topic", "prompts", "words", "seed", "image_steps", "video_steps", "size"}


def load_manifest(out: Path) -> dict[int, Item]:
    """The finished items recorded in `out` (none if there is no manifest yet)."""
    path = out / MANIFEST
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    timings = json.loads((out / TIMINGS).read_text()) if (out / TIMINGS).is_file() else {}
    seconds = timings.get("seconds", {})
    items = {}
    for d in data["items"]:
        d = dict(d)
        old = d.pop("seconds", {})  # manifests before timings.json kept them per item
        try:
            items[int(d["index"])] = Item(**d, seconds=seconds.get(str(d["index"]), old))
        except (KeyError, TypeError, ValueError) as e:  # a hand edit or a newer release's file
            raise ValueError(
                f"{path}: an item this release cannot read ({type(e).__name__}: {e}); move the "
                "folder aside or choose a new output folder"
            ) from e
    return items


def changed_settings(out: Path, settings: Settings) -> list[str]:
    """How the settings (other than num_videos) differ from those `out`'s manifest recorded.

    One line per setting, e.g. `--size: 720x480 in its manifest, 1360x768 now`.
    """
    path = out / MANIFEST
    if not path.is_file():
        return []
    body = json.loads(path.read_text())
    saved = dict(body.get("settings", {}))
    now = json.loads(json.dumps(asdict(settings)))  # as the manifest stores them
    where = {k: "in its manifest" for k in now}
    if "size" not in saved:  # a manifest from before size was recorded: its first frames tell
        saved["size"] = _frame_size(out, body.get("items", [])) or now["size"]
        where["size"] = "in its first frames"
    return [
        _difference(k, saved.get(k), now[k], where[k])
        for k in sorted(now)
        if k != "num_videos" and saved.get(k) != now[k]
    ]


def _frame_size(out: Path, items: list[dict[str, Any]]) -> list[int] | None:
    """(width, height) of the first of the manifest `items`' frames on disk (None: no frame)."""
    from PIL import Image

    for d in items:
        if _has(out, d.get("image")):
            with Image.open(out / d["image"]) as image:
                return list(image.size)
    return None


def _difference(key: str, saved: Any, now: Any, where: str) -> str:
    """`name: saved <where>, now now`, values shown short (prompts by count or line)."""
    name = "--" + key.replace("_", "-") if key in _OPTIONS else key
    if key == "prompts" and isinstance(saved, list) and isinstance(now, list):
        if len(saved) != len(now):
            return f"{name}: {len(saved)} prompts {where}, {len(now)} now"
        line = next(i for i, (a, b) in enumerate(zip(saved, now, strict=True)) if a != b)
        saved, now = saved[line], now[line]
        name = f"{name} (prompt {line + 1})"
    return f"{name}: {_show(key, saved)} {where}, {_show(key, now)} now"


def _show(key: str, value: Any) -> str:
    if key == "size" and isinstance(value, list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if key == "prompts" and value is None:
        return "none (the LLM writes them)"
    if key == "prompts" and isinstance(value, list):
        return f"{len(value)} prompts"
    if isinstance(value, str) and len(value) > 56:
        return repr(value[:53] + "...")  # cut inside its quotes
    text = str(value) if isinstance(value, int | float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def save_manifest(out: Path, items: dict[int, Item], settings: Settings) -> None:
    """Write the manifest and timings.json, each atomically (a kill leaves old or new)."""
    rows = [asdict(items[i]) for i in sorted(items)]
    seconds = {str(d["index"]): d.pop("seconds") for d in rows}
    _write_json(out / TIMINGS, {"seconds": seconds})
    _write_json(out / MANIFEST, {"settings": asdict(settings), "items": rows})


def _write_json(path: Path, body: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def _has(out: Path, name: str | None) -> bool:
    """True if the manifest's file `name` exists in `out`."""
    return name is not None and (out / name).is_file()


def _free(*objects: Any) -> None:
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def write_prompts(
    items: dict[int, Item], s: Settings, llm_weights: str | None, log: Log, save: Callable[[], None]
) -> None:
    """Stage 1: a prompt per item (given ones, or the LLM's, sampled with the item's seed)."""
    todo = [i for i in range(s.num_videos) if not items.setdefault(i, Item(i)).prompt]
    if not todo:
        return
    if s.prompts:
        for i in todo:
            items[i].prompt = s.prompts[i % len(s.prompts)]
        return
    if not llm_weights:
        raise ValueError("--llm-weights is needed to write prompts (or give --prompts FILE)")
    from cogvx.gpu import measure_gpu
    from cogvx.prompting.extend import LLM_FOLDER, PromptExtender
    from cogvx.weights.install import find_weights_root, install_model

    folder = install_model(llm_weights, LLM_FOLDER, "--llm-weights is empty", log)
    folder = find_weights_root(folder, lambda p: (p / "config.json").is_file(),
                               f"--llm-weights: no config.json in {folder}")  # fmt: skip
    measured = measure_gpu()
    llm = PromptExtender.load(folder, measured[0] if measured else None, log)
    for i in _progress(todo, "prompts"):
        t0 = time.perf_counter()
        items[i].prompt_seed = s.seed + i
        ask = IDEA_PROMPT.format(topic=s.topic, n=i + 1, words=s.words)
        text, _ = llm.answer(
            [{"role": "user", "content": ask}], 2 * s.words, seed=items[i].prompt_seed
        )
        items[i].prompt = " ".join(text.split()[: s.words]) or s.topic
        items[i].seconds["prompt"] = time.perf_counter() - t0
        save()
    _free(llm)


def paint_frames(
    items: dict[int, Item], s: Settings, out: Path, flux_weights: str, log: Log,
    save: Callable[[], None],
) -> None:  # fmt: skip
    """Stage 2: FLUX paints each item's first frame at `s.size` (width, height)."""
    todo = [i for i in sorted(items) if not _has(out, items[i].image)]
    if not todo:
        return
    from diffusers import FluxPipeline

    from cogvx.weights.install import find_weights_root, install_model

    folder = install_model(flux_weights, "flux", "--flux-weights is empty", log)
    folder = find_weights_root(folder, lambda p: (p / "model_index.json").is_file(),
                               f"--flux-weights: no model_index.json in {folder}")  # fmt: skip
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    pipe = FluxPipeline.from_pretrained(folder, dtype=dtype, use_safetensors=True).to(_device())
    pipe.set_progress_bar_config(disable=True)
    w, h = s.size
    for i in _progress(todo, "first frames"):
        t0 = time.perf_counter()
        items[i].image_seed = s.seed + 1000 + i
        with torch.inference_mode():
            image = pipe(
                prompt=items[i].prompt, width=w, height=h, num_inference_steps=s.image_steps,
                guidance_scale=s.image_guidance, max_sequence_length=512,
                generator=torch.Generator("cpu").manual_seed(items[i].image_seed),
            ).images[0]  # fmt: skip
        name = f"{i:04d}.png"
        image.save(out / name)
        items[i].image = name
        items[i].seconds["image"] = time.perf_counter() - t0
        save()
    _free(pipe)


def animate(
    items: dict[int, Item],
    s: Settings,
    out: Path,
    video_weights: str | None,
    log: Log,
    save: Callable[[], None],
) -> None:
    """Stage 3: CogVideoX image-to-video animates each first frame with its prompt."""
    todo = [i for i in sorted(items) if not _has(out, items[i].video)]
    if not todo:
        return
    from PIL import Image

    from cogvx.cogvideox.generate import Request, VideoModel
    from cogvx.video import write_video

    model = VideoModel.load(s.video_model, video_weights, log=log)
    v = model.variant
    for i in _progress(todo, "videos"):
        t0 = time.perf_counter()
        items[i].video_seed = s.seed + 2000 + i
        image_name = items[i].image
        assert image_name is not None  # stage 2 made every first frame
        image = Image.open(out / image_name).convert("RGB").resize((v.width, v.height))
        result = model.generate(
            Request(
                prompt=items[i].prompt, negative_prompt="", num_frames=v.default_frames,
                num_inference_steps=s.video_steps, guidance_scale=v.default_guidance,
                use_dynamic_cfg=v.dynamic_cfg, seed=items[i].video_seed, image=image,
            )
        )  # fmt: skip
        name = f"{i:04d}.mp4"
        write_video(result.frames, out / name, fps=s.fps)
        items[i].video = name
        items[i].seconds["video"] = time.perf_counter() - t0
        save()
    _free(model)


def run_batch(
    s: Settings,
    out: Path,
    llm_weights: str | None,
    flux_weights: str,
    video_weights: str | None,
    log: Log = log_line,
) -> dict[int, Item]:
    """All three stages over `s.num_videos` items in `out`; resumes from its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    changed = changed_settings(out, s)
    if changed:  # its items were made with those: resuming would mix two batches
        raise ValueError(
            f"{out} holds a batch made with other settings ({'; '.join(changed)}): run with "
            "the same settings to resume it (--num-videos may change), or choose a new output "
            "folder"
        )
    items = {i: it for i, it in load_manifest(out).items() if i < s.num_videos}
    done = sum(1 for it in items.values() if _has(out, it.video))
    if done:
        log(f"resuming: {done} of {s.num_videos} videos are already in {out}")

    def save() -> None:
        save_manifest(out, items, s)

    write_prompts(items, s, llm_weights, log, save)
    save()
    paint_frames(items, s, out, flux_weights, log, save)
    animate(items, s, out, video_weights, log, save)
    save()
    return items


def _progress(todo: list[int], what: str) -> Any:
    from tqdm import tqdm

    return tqdm(todo, desc=what, unit="item", mininterval=1.0)
