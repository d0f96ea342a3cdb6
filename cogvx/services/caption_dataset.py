"""Caption a dataset of clips on Ray Data, resumably: paths -> caption actors -> JSONL / Parquet.

The driver lists the clips, drops those OUTPUT already holds, and streams the rest through
`map_batches` with one actor per GPU (one CPU actor without GPUs). Each actor loads
`CaptionService` once and runs `caption_many` over its batches; a bad clip is an error row, never
a failed job. Only the driver writes, a batch at a time as batches complete, so a killed run
keeps what it finished and a rerun skips it (the formats: `caption_dataset_output`).

Ray and pyarrow are imported inside functions: importing this module needs neither.
"""

from __future__ import annotations

import glob
import math
import os
import re
import tarfile
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from cogvx import checks
from cogvx.cogvlm2.batching import MAX_BATCH
from cogvx.cogvlm2.captioner import DEFAULT_PROMPT
from cogvx.cogvlm2.sampling import STRATEGIES
from cogvx.errors import CaptionSetupError, CogvxError, InputError, MissingWeightsError
from cogvx.log import clip
from cogvx.log import log as log_line
from cogvx.net.http import is_url
from cogvx.services.caption import (
    HF_REPO,
    RANGES,
    CaptionService,
    find_caption_root,
    missing_weights_message,
)
from cogvx.services.caption_batch import ERROR_CHARS, CaptionRow, caption_many
from cogvx.services.caption_dataset_output import JsonlSink, ParquetSink, open_sink, rows_table

Log = Callable[[str], None]

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")
GLOB_CHARS = "*?["
CLIPS_PER_CALL = 16  # clips per actor call: the unit written to OUTPUT (and redone after a kill)
PROGRESS_SECONDS = 10.0  # a clips/s line at most this often
FETCH_CHUNK = 8 << 20


class CaptionJobError(CogvxError, RuntimeError):
    """The Ray job could not start or stopped; the rows written so far stay in OUTPUT."""


@dataclass(frozen=True)
class DatasetJob:
    """What to caption, where to write it, and how."""

    inputs: str  # a folder, a glob, or a text file of paths / URLs
    output: Path  # .jsonl or .parquet
    weights: str | None  # like COG_WEIGHTS: a folder, a .tar or an https URL of one
    prompt: str = DEFAULT_PROMPT
    strategy: str = "chat"
    max_new_tokens: int = 2048
    batch_size: int | None = None  # clips per model batch (None: from free memory)
    clips_per_call: int = CLIPS_PER_CALL
    gpus: int = 0  # actors with one GPU each; 0: one CPU actor
    readers: int = 2
    ordered: bool = False
    verbose: bool = False  # the actors' per-clip log lines
    address: str | None = None  # None: Ray decides (RAY_ADDRESS, else a local instance)
    num_cpus: int | None = None  # CPUs of a local Ray instance (None: all)

    def checked(self) -> DatasetJob:
        """The job with its values checked (InputError names the bad one)."""
        prompt = checks.prompt(self.prompt)
        checks.choice("strategy", self.strategy, STRATEGIES)
        lo, hi = map(int, RANGES["max_new_tokens"])
        checks.integer("max_new_tokens", self.max_new_tokens, lo, hi)
        if self.batch_size is not None:
            checks.integer("batch_size", self.batch_size, 1, MAX_BATCH)
        checks.integer("clips_per_call", self.clips_per_call, 1, 100_000)
        checks.integer("gpus", self.gpus, 0, 10_000)
        checks.integer("readers", self.readers, 1, 64)
        if self.num_cpus is not None:
            checks.integer("num_cpus", self.num_cpus, 1, 100_000)
        return replace(self, prompt=prompt, output=Path(self.output))


@dataclass
class JobReport:
    """How the job went."""

    listed: int  # clips in INPUT
    skipped: int  # already in OUTPUT
    captioned: int  # rows written by this run
    errors: int  # of those, rows with an error
    seconds: float
    output: Path

    @property
    def clips_per_second(self) -> float:
        """Rows written by this run per second of its wall time."""
        return self.captioned / max(self.seconds, 1e-9)


# ---- inputs ----


def is_remote(path: str) -> bool:
    """True for URLs (s3://, gs://, https://, ...) other than file://."""
    return "://" in path and not path.lower().startswith("file://")


def _local(text: str) -> str:
    if text.lower().startswith("file://"):
        text = unquote(urlparse(text).path)
    return os.path.abspath(os.path.expanduser(text))


def list_inputs(spec: str) -> list[str]:
    """The clips INPUT names, in order, each once: a folder (recursive, video suffixes), a glob,
    a video file, or a text file with one path or URL a line (blank lines and # comments skipped).
    Local paths become absolute; URLs stay as written."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
        items = sorted(_local(str(p)) for p in found)
        where = f"folder {spec} (suffixes {', '.join(VIDEO_SUFFIXES)})"
    elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        items, where = [_local(spec)], spec
    elif path.is_file():
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        kept = [line for line in lines if line and not line.startswith("#")]
        items = [line if is_remote(line) else _local(line) for line in kept]
        where = f"list file {spec}"
    elif any(c in spec for c in GLOB_CHARS):
        matches = glob.glob(os.path.expanduser(spec), recursive=True)
        items = sorted(_local(p) for p in matches if os.path.isfile(p))
        where = f"glob {spec}"
    else:
        raise InputError(
            f"INPUT {clip(spec)} is not a folder, a video file, a list file or a glob that matches"
        )
    if not items:
        raise InputError(f"no clips found in {clip(where)}")
    return list(dict.fromkeys(items))


def check_weights(weights: str | None) -> None:
    """Refuse missing or misplaced local weights before any actor starts (URLs: the actors)."""
    if not weights:
        raise MissingWeightsError(missing_weights_message())
    if is_url(weights):
        return
    path = Path(weights)
    if path.is_dir():
        find_caption_root(path)
    elif not path.is_file():
        raise CaptionSetupError(
            f"weights {clip(weights)} do not exist (expected a folder, a .tar or an https URL)"
        )
    elif not tarfile.is_tarfile(path):
        raise CaptionSetupError(f"weights {clip(weights)} is a file but not a tarball")


def fetch_to_local(uri: str, folder: Path) -> Path:
    """Copy a remote clip to `folder` through pyarrow.fs (s3, gs, hdfs, ...) or fsspec (http)."""
    import pyarrow.fs as pafs

    suffix = PurePosixPath(urlparse(uri).path).suffix.lower()
    dst = folder / f"{uuid.uuid4().hex}{suffix if suffix in VIDEO_SUFFIXES else '.bin'}"
    scheme = uri.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        import fsspec

        fs: Any = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))
        src = uri
    else:
        fs, src = pafs.FileSystem.from_uri(uri)
    try:
        with fs.open_input_stream(src) as stream, open(dst, "wb") as out:
            while chunk := stream.read(FETCH_CHUNK):
                out.write(chunk)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return dst


# ---- one batch in an actor ----


def _error_row(path: str, prompt: str, strategy: str, exc: BaseException, seconds: float) -> dict:
    error = f"{type(exc).__name__}: {str(exc)[:ERROR_CHARS]}"
    return CaptionRow(path, None, 0, None, HF_REPO, prompt, strategy, seconds, error).as_dict()


def caption_paths(
    service: CaptionService,
    paths: list[str],
    scratch: Path,
    prompt: str,
    strategy: str,
    max_new_tokens: int,
    batch_size: int | None,
    readers: int,
) -> list[dict[str, Any]]:
    """Rows for `paths` in order: remote clips fetched to `scratch` first (and removed after)."""
    rows: dict[int, dict[str, Any]] = {}
    local: dict[int, str] = {i: p for i, p in enumerate(paths) if not is_remote(p)}
    remote = [i for i, p in enumerate(paths) if is_remote(p)]

    def fetch(i: int) -> tuple[int, Path | BaseException, float]:
        t0 = time.perf_counter()
        try:
            return i, fetch_to_local(paths[i], scratch), time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - a clip that cannot be fetched is its row
            return i, exc, time.perf_counter() - t0

    fetched: list[Path] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, readers)) as pool:
            for i, got, seconds in pool.map(fetch, remote):
                if isinstance(got, BaseException):
                    rows[i] = _error_row(paths[i], prompt, strategy, got, seconds)
                else:
                    local[i] = str(got)
                    fetched.append(got)
        order = sorted(local)
        results = caption_many(
            service, [local[i] for i in order], prompt, strategy, max_new_tokens, batch_size,
            readers,
        )  # fmt: skip
        for i, row in zip(order, results, strict=True):
            row.path = paths[i]
            rows[i] = row.as_dict()
    finally:
        for f in fetched:
            f.unlink(missing_ok=True)
    return [rows[i] for i in range(len(paths))]


def _quiet(_: str) -> None:
    return None


class ClipCaptioner:
    """A Ray Data actor: the model loaded once; each call turns a batch of paths into rows."""

    def __init__(
        self,
        weights: str,
        prompt: str,
        strategy: str,
        max_new_tokens: int,
        batch_size: int | None,
        readers: int,
        verbose: bool = False,
    ) -> None:
        self.service = CaptionService(weights, log_line)
        if not verbose:
            self.service.log = _quiet
        self.prompt, self.strategy, self.max_new_tokens = prompt, strategy, max_new_tokens
        self.batch_size, self.readers = batch_size, readers
        self.scratch = Path(tempfile.mkdtemp(prefix="cogvx-clips-"))

    def __call__(self, batch: Any) -> Any:
        """A pyarrow table of paths -> a pyarrow table of caption rows (same order)."""
        paths = [str(p) for p in batch.column("path").to_pylist()]
        t0 = time.perf_counter()
        try:
            rows = caption_paths(
                self.service, paths, self.scratch, self.prompt, self.strategy,
                self.max_new_tokens, self.batch_size, self.readers,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - outside caption_many's own handling: rows anyway
            seconds = (time.perf_counter() - t0) / max(1, len(paths))
            rows = [_error_row(p, self.prompt, self.strategy, exc, seconds) for p in paths]
        return rows_table(rows)


# ---- the job ----


class _Progress:
    """Counts rows; a clips/s line every PROGRESS_SECONDS and at the end."""

    def __init__(self, total: int, log: Log, every: float = PROGRESS_SECONDS) -> None:
        self.total, self.log, self.every = total, log, every
        self.t0 = self.last = time.perf_counter()
        self.done = self.errors = self.first_rows = 0
        self.first_at: float | None = None

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at, self.first_rows = now, len(rows)
        self.done += len(rows)
        self.errors += sum(r["error"] is not None for r in rows)
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            self.log(self.line())

    def line(self) -> str:
        seconds = time.perf_counter() - self.t0
        text = (
            f"captioned {self.done}/{self.total} clips ({self.errors} errors) in {seconds:.1f}s: "
            f"{self.done / max(seconds, 1e-9):.2f} clips/s"
        )
        if self.first_at is not None and self.done > self.first_rows:
            steady = (self.done - self.first_rows) / max(time.perf_counter() - self.first_at, 1e-9)
            text += f" ({steady:.2f} clips/s after the first batch)"
        return text


def _start_ray(job: DatasetJob) -> bool:
    """Connect to (or start) Ray unless it is up; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False}
    if job.num_cpus is not None:  # only for a local instance: a cluster refuses it
        kwargs["num_cpus"] = job.num_cpus
    ray.init(address=job.address, **kwargs)
    return True


def _cause(exc: BaseException) -> str:
    """The error behind a Ray failure: the last cogvx error its remote traceback names, else its
    first line (Ray's messages carry the worker's whole traceback)."""
    text = str(exc)
    ours = re.findall(r"^cogvx\.errors\.(\w+: .+)$", text, flags=re.MULTILINE)
    if ours:
        return f"{clip(ours[-1], 1000)} (in a Ray actor: {type(exc).__name__})"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {clip(first, 1000)}"


def _caption_on_ray(
    job: DatasetJob, todo: list[str], sink: JsonlSink | ParquetSink, progress: _Progress
) -> None:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    started = False
    try:
        started = _start_ray(job)
        seen = ray.cluster_resources().get("GPU", 0)
        if job.gpus > seen:  # an autoscaler may add them; a laptop would wait for ever
            progress.log(
                f"Ray sees {seen:g} GPUs; the {job.gpus} caption actors (one GPU each) wait "
                "until the cluster has them (Ctrl-C and lower --gpus if it never will)"
            )
        with warnings.catch_warnings():  # creating it warns about its own deprecated fields
            warnings.simplefilter("ignore", DeprecationWarning)
            context = DataContext.get_current()
        context.execution_options.preserve_order = job.ordered
        per_call = max(job.clips_per_call, job.batch_size or 1)
        blocks = math.ceil(len(todo) / per_call)
        paths = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
        resources: dict[str, Any] = {"num_gpus": 1} if job.gpus else {"num_cpus": 1}
        captions = paths.map_batches(
            ClipCaptioner,
            fn_constructor_kwargs={
                "weights": job.weights,
                "prompt": job.prompt,
                "strategy": job.strategy,
                "max_new_tokens": job.max_new_tokens,
                "batch_size": job.batch_size,
                "readers": job.readers,
                "verbose": job.verbose,
            },
            batch_size=None,  # a call per block of at most `per_call` clips (16 would bundle)
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=max(1, job.gpus)),
            **resources,
        )
        table: Any  # a pyarrow.Table (batch_format="pyarrow")
        for table in captions.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = table.to_pylist()
            sink.write(rows)
            progress.add(rows)
    except Exception as exc:
        raise CaptionJobError(
            f"the caption job stopped after {progress.done} of {len(todo)} clips: {_cause(exc)}; "
            "the rows written so far are kept in OUTPUT: fix the cause and rerun to resume"
        ) from exc
    finally:
        if started:
            ray.shutdown()


def run_job(job: DatasetJob, log: Log = log_line) -> JobReport:
    """Caption every clip of INPUT not yet in OUTPUT on Ray; OUTPUT gets one row per clip.

    InputError / SetupError before any work (bad output suffix, no clips, bad weights);
    CaptionJobError if Ray could not run the job. Bad clips are rows with their error."""
    t0 = time.perf_counter()
    job = job.checked()
    sink = open_sink(job.output)
    if isinstance(sink, JsonlSink) and sink.dropped_torn_line:
        log(f"{job.output}: dropped a line cut off by an earlier run")
    paths = list_inputs(job.inputs)
    check_weights(job.weights)
    todo = [p for p in paths if p not in sink.done]
    log(
        f"{len(paths)} clips in {clip(job.inputs)}: {len(paths) - len(todo)} already in "
        f"{job.output}, {len(todo)} to caption"
    )
    progress = _Progress(len(todo), log)
    if todo:
        _caption_on_ray(job, todo, sink, progress)
    sink.finish(paths if job.ordered else None)
    seconds = time.perf_counter() - t0
    log(f"{progress.line() if todo else 'nothing to caption'}; wrote {job.output}")
    skipped = len(paths) - len(todo)
    return JobReport(len(paths), skipped, progress.done, progress.errors, seconds, job.output)
