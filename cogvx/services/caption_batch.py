"""Caption many clips: a reader pool decodes ahead while the model captions batches.

One row per clip, in input order, whatever happens to it: a clip that cannot be read, or whose
batch fails, carries its error instead of a caption, and the rest go on. The dataset tool and
the predictor's batch input both run on this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cogvx import checks
from cogvx.cogvlm2.batching import MAX_BATCH, choose_batch_size
from cogvx.errors import InputError
from cogvx.log import log as log_line
from cogvx.services.caption import (
    HF_REPO,
    MAX_FRAMES,
    CaptionService,
    Clip,
    check_request,
    load_clip,
)

Log = Callable[[str], None]
ERROR_CHARS = 500  # an error row keeps this much of the message


@dataclass
class CaptionRow:
    """One clip's result (a JSONL / Parquet row)."""

    path: str
    caption: str | None
    frames_used: int
    duration: float | None
    model: str
    prompt: str
    strategy: str
    seconds: float
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The row as plain values."""
        return asdict(self)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:ERROR_CHARS]}"


def read_ahead(
    paths: Iterable[str | Path],
    strategy: str,
    workers: int,
    lookahead: int,
    log: Log = log_line,
) -> Iterator[tuple[str, Clip | BaseException, float]]:
    """(path, clip or the error reading it, seconds) in input order, decoded by `workers` threads
    at most `lookahead` clips ahead of the consumer."""

    def read(path: str) -> tuple[Clip | BaseException, float]:
        t0 = time.perf_counter()
        try:
            return load_clip(path, strategy, log), time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - a bad clip becomes its error row
            return exc, time.perf_counter() - t0

    pending: list[tuple[str, Future]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="clip-reader") as pool:
        source = iter(paths)
        for path in source:
            pending.append((str(path), pool.submit(read, str(path))))
            if len(pending) >= lookahead:
                name, fut = pending.pop(0)
                yield (name, *fut.result())
        for name, fut in pending:
            yield (name, *fut.result())


def caption_many(
    service: CaptionService,
    paths: Iterable[str | Path],
    prompt: str,
    strategy: str = "chat",
    max_new_tokens: int = 2048,
    batch_size: int | None = None,
    readers: int = 2,
) -> Iterator[CaptionRow]:
    """Greedy captions of `paths`, batched (None: sized from free memory), in input order.

    A clip whose frames leave no room for the prompt is an error row; the prompt is tokenized
    once per frame count, not once per clip."""
    captioner = service.captioner
    if batch_size is None:
        free = _free_bytes(service)
        batch_size, why = choose_batch_size(
            free, captioner.model.config, MAX_FRAMES, max_new_tokens
        )
        service.log(f"caption batch: {why}")
    fits = _LengthCheck(service, prompt, strategy, max_new_tokens)
    rows: list[tuple[str, Clip | BaseException, float]] = []
    clips = read_ahead(paths, strategy, readers, lookahead=2 * batch_size, log=service.log)
    for item in clips:
        rows.append(item)
        if len(rows) == batch_size:
            yield from _caption_batch(service, rows, prompt, strategy, max_new_tokens, fits)
            rows = []
    if rows:
        yield from _caption_batch(service, rows, prompt, strategy, max_new_tokens, fits)


class _LengthCheck:
    """`CaptionService.check_length` for one prompt, remembered per frame count."""

    def __init__(
        self, service: CaptionService, prompt: str, strategy: str, max_new_tokens: int
    ) -> None:
        self.service, self.prompt, self.strategy = service, prompt, strategy
        self.max_new_tokens = max_new_tokens
        self.refused: dict[int, str | None] = {}  # frame count -> the refusal, None: it fits

    def __call__(self, num_frames: int) -> None:
        """InputError if the prompt does not fit beside `num_frames` frames."""
        if num_frames not in self.refused:
            try:
                self.service.check_length(
                    num_frames, self.prompt, self.strategy, self.max_new_tokens
                )
                self.refused[num_frames] = None
            except InputError as exc:
                self.refused[num_frames] = str(exc)
        message = self.refused[num_frames]
        if message is not None:
            raise InputError(message)


def _caption_batch(
    service: CaptionService,
    items: list[tuple[str, Clip | BaseException, float]],
    prompt: str,
    strategy: str,
    max_new_tokens: int,
    fits: Callable[[int], None],
) -> Iterator[CaptionRow]:
    """Rows for one batch; a failing batch is retried clip by clip to find the bad one."""
    good = [i for i, (_, c, _) in enumerate(items) if isinstance(c, Clip)]
    texts: dict[int, str | BaseException] = {}
    seconds = 0.0

    def clip(i: int) -> Clip:
        c = items[i][1]
        assert isinstance(c, Clip)
        return c

    def caption(indices: list[int]) -> list[str]:
        for i in indices:
            fits(len(clip(i).indices))
        frames = [clip(i).frames for i in indices]
        return service.captioner.caption_batch(frames, prompt, strategy, max_new_tokens)

    if good:
        t0 = time.perf_counter()
        try:
            texts.update(zip(good, caption(good), strict=True))
        except Exception:  # noqa: BLE001 - isolate the clip that fails
            for i in good:
                try:
                    texts[i] = caption([i])[0]
                except Exception as exc:  # noqa: BLE001 - its error row
                    texts[i] = exc
        seconds = (time.perf_counter() - t0) / len(good)
    for i, (path, c, read_s) in enumerate(items):
        if isinstance(c, BaseException):
            yield CaptionRow(path, None, 0, None, HF_REPO, prompt, strategy, read_s, _error(c))
            continue
        text = texts[i]
        error = _error(text) if isinstance(text, BaseException) else None
        yield CaptionRow(
            path, None if error else str(text), len(c.indices), c.info.duration, HF_REPO,
            prompt, strategy, read_s + seconds, error,
        )  # fmt: skip


def _free_bytes(service: CaptionService) -> int | None:
    """Memory left for the batch on the model's GPU (None on CPU)."""
    from cogvx.gpu import available_memory_gib

    device = service.captioner.model.device
    if device.type != "cuda":
        return None
    return int(available_memory_gib(device) * 2**30)


def caption_batch_file(
    service: CaptionService,
    source: Path,
    prompt: str,
    strategy: str = "chat",
    max_new_tokens: int = 2048,
    batch_size: int | None = None,
) -> Path:
    """The predictor's batch input: unpack `source`, caption every clip, write one JSONL file.

    The prompt is refused (InputError) before anything is unpacked unless it fits beside
    MAX_FRAMES frames, the most a clip gets, so every row's copy of it is bounded by the model's
    positions. Rows keep the input's order and name each clip by its member name or URL without
    its query (never a server path; a list line that is not a URL by its number only, never its
    text); a clip that could not be unpacked or fetched is a row with its error."""
    import json
    import shutil

    from cogvx import settings
    from cogvx.services.caption_inputs import unpack_batch
    from cogvx.video.output import fresh_output_path

    prompt, max_new_tokens = check_request(prompt, strategy, max_new_tokens)
    if batch_size is not None:
        batch_size = checks.integer("batch_size", batch_size, 1, MAX_BATCH)
    service.check_length(MAX_FRAMES, prompt, strategy, max_new_tokens)
    out = fresh_output_path(settings.output_root(), "jsonl", stem="captions")
    work = out.parent / "clips"
    t0 = time.perf_counter()
    try:
        items = unpack_batch(source, work, service.log)
        readable = [i for i in items if i.path is not None]
        rows = caption_many(
            service, [i.path for i in readable if i.path], prompt, strategy, max_new_tokens,
            batch_size,
        )  # fmt: skip
        by_path = {str(i.path): i.label for i in readable}
        done = 0
        with open(out, "w", encoding="utf-8") as f:
            results = iter(rows)
            for item in items:
                if item.path is None:
                    row = CaptionRow(item.label, None, 0, None, HF_REPO, prompt, strategy, 0.0,
                                     item.error)  # fmt: skip
                else:
                    row = next(results)
                    row.path = by_path[row.path]
                done += row.error is None
                f.write(json.dumps(row.as_dict(), ensure_ascii=False) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    service.log(
        f"captioned {done} of {len(items)} clips in {seconds:.1f}s "
        f"({len(items) / max(seconds, 1e-9):.2f} clips/s); wrote {out.name}"
    )
    return out
