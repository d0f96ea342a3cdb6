"""Caption a dataset of clips on Ray Data, resumably: paths -> caption actors -> JSONL / Parquet.

The driver lists the clips, drops those OUTPUT already holds, and streams the rest through
`map_batches` with one actor per GPU (one CPU actor without GPUs). Each actor loads
`CaptionService` once and runs `caption_many` over its batches; a bad clip is an error row, never
a failed job. Only the driver writes, a batch at a time as batches complete, so a killed run
keeps what it finished and a rerun skips it (the formats: `caption_dataset_output`).

A rerun skips the clips whose row has a caption and captions again those whose row is an error,
the newer row replacing the older (OUTPUT keeps each clip's newest row). It refuses an OUTPUT
made with other settings (`job_settings`) or that another job writes; all is checked before
OUTPUT is touched. A call whose actor process dies (a segfault, an out-of-memory kill) is tried
CRASH_RETRIES more times, then dropped; its clips are tried again one a call, and a clip that
still kills its actor is an error row, as is a file name that is not UTF-8 (`shown_path`).

INPUT (`list_inputs`, in `caption_dataset_inputs`): a folder, a glob or a list file.

Ray and pyarrow are imported inside functions: importing this module needs neither.
"""

from __future__ import annotations

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
from urllib.parse import urlparse

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
    check_prompt,
    find_caption_root,
    missing_weights_message,
)
from cogvx.services.caption_batch import ERROR_CHARS, CaptionRow, caption_many
from cogvx.services.caption_dataset_inputs import VIDEO_SUFFIXES, is_remote, list_inputs
from cogvx.services.caption_dataset_output import (
    JsonlSink,
    ParquetSink,
    check_output,
    check_settings,
    open_sink,
    output_lock,
    rows_table,
    shown_path,
)

Log = Callable[[str], None]

CLIPS_PER_CALL = 16  # clips per actor call: the unit written to OUTPUT (and redone after a kill)
PROGRESS_SECONDS = 10.0  # a clips/s line at most this often
FETCH_CHUNK = 8 << 20
CRASH_RETRIES = 1  # a call whose actor process dies is tried this many more times


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
        prompt = check_prompt(self.prompt)  # bounded: every row holds a copy
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


def _caption_pass(
    job: DatasetJob,
    todo: list[str],
    per_call: int,
    sink: JsonlSink | ParquetSink,
    progress: _Progress,
) -> set[str]:
    """One Ray Data run over `todo`, `per_call` clips a call; the paths it wrote rows for (a call
    whose actor died CRASH_RETRIES + 1 times is dropped: its clips are not among them, nor those
    of the calls queued on that actor when it died). One clip a call: one call an actor at a
    time, so that a dropped call is the clip that killed it."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    with warnings.catch_warnings():  # creating it warns about its own deprecated fields
        warnings.simplefilter("ignore", DeprecationWarning)
        context = DataContext.get_current()
    context.execution_options.preserve_order = job.ordered
    context.max_errored_blocks = -1  # a dropped call: its clips are retried, then error rows
    blocks = math.ceil(len(todo) / per_call)
    paths = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
    resources: dict[str, Any] = {"num_gpus": 1} if job.gpus else {"num_cpus": 1}
    with warnings.catch_warnings():  # Ray 2.60 deprecates **ray_remote_args, the only way yet
        warnings.simplefilter("ignore", DeprecationWarning)  # to bound these two
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
            compute=ActorPoolStrategy(
                size=max(1, job.gpus), max_tasks_in_flight_per_actor=1 if per_call == 1 else None
            ),
            # Ray's default retries a call whose actor died for ever: a clip that crashes the
            # process would loop. Each call may kill an actor CRASH_RETRIES + 1 times at most.
            max_task_retries=CRASH_RETRIES,
            max_restarts=blocks * (CRASH_RETRIES + 1),
            **resources,
        )
    written: set[str] = set()
    table: Any  # a pyarrow.Table (batch_format="pyarrow")
    for table in captions.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = table.to_pylist()
        sink.write(rows)
        progress.add(rows)
        written.update(r["path"] for r in rows)
    return written


def _caption_on_ray(
    job: DatasetJob, todo: list[str], sink: JsonlSink | ParquetSink, progress: _Progress
) -> None:
    import ray

    started = False
    try:
        started = _start_ray(job)
        seen = ray.cluster_resources().get("GPU", 0)
        if job.gpus > seen:  # an autoscaler may add them; a laptop would wait for ever
            progress.log(
                f"Ray sees {seen:g} GPUs; the {job.gpus} caption actors (one GPU each) wait "
                "until the cluster has them (Ctrl-C and lower --gpus if it never will)"
            )
        per_call = max(job.clips_per_call, job.batch_size or 1)
        written = _caption_pass(job, todo, per_call, sink, progress)
        lost = [p for p in todo if p not in written]
        if lost and per_call > 1:  # find the clip that killed its actor: one clip a call
            progress.log(f"{len(lost)} clips were in calls whose actor died: retrying one a call")
            written = _caption_pass(job, lost, 1, sink, progress)
            lost = [p for p in lost if p not in written]
        if lost:
            crash = CaptionJobError(
                f"the caption actor's process died captioning this clip alone, on each of "
                f"{CRASH_RETRIES + 1} tries (a crash such as a segfault, or a kill for memory); "
                "see the Ray worker logs"
            )
            rows = [_error_row(p, job.prompt, job.strategy, crash, 0.0) for p in lost]
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


def _not_utf8(shown: str) -> InputError:
    return InputError(f"the file name {shown} is not UTF-8 text; rename the file to caption it")


def job_settings(job: DatasetJob) -> dict[str, Any]:
    """What OUTPUT's rows depend on, recorded beside it (a resume must match)."""
    weights = job.weights
    if weights and not is_url(weights) and not is_remote(weights):
        weights = os.path.abspath(os.path.expanduser(weights))
    return {"model": HF_REPO, "weights": weights, "prompt": job.prompt, "strategy": job.strategy,
            "max_new_tokens": job.max_new_tokens}  # fmt: skip


def run_job(job: DatasetJob, log: Log = log_line) -> JobReport:
    """Caption every clip of INPUT without a captioned row in OUTPUT on Ray; OUTPUT gets one row
    per clip (a clip whose row was an error is captioned again, its new row replacing it).

    InputError / SetupError before OUTPUT is touched (bad output, no clips, bad weights, OUTPUT
    made with other settings or being written by another job); CaptionJobError if Ray could not
    run the job. Bad clips are rows with their error."""
    t0 = time.perf_counter()
    job = job.checked()
    check_output(job.output)
    paths = list_inputs(job.inputs)
    check_weights(job.weights)
    with output_lock(job.output):
        check_settings(job.output, job_settings(job))
        sink = open_sink(job.output)
        if isinstance(sink, JsonlSink) and sink.dropped_torn_line:
            log(f"{job.output}: dropped a line cut off by an earlier run")
        todo = [p for p in paths if shown_path(p) not in sink.done]
        log(
            f"{len(paths)} clips in {clip(job.inputs)}: {len(paths) - len(todo)} already in "
            f"{job.output}, {len(todo)} to caption"
        )
        progress = _Progress(len(todo), log)
        unnamed = [shown_path(p) for p in todo if shown_path(p) != p]  # not UTF-8: no row holds it
        if unnamed:
            rows = [_error_row(p, job.prompt, job.strategy, _not_utf8(p), 0.0) for p in unnamed]
            sink.write(rows)
            progress.add(rows)
        named = [p for p in todo if shown_path(p) == p]
        if named:
            _caption_on_ray(job, named, sink, progress)
        sink.finish([shown_path(p) for p in paths] if job.ordered else None)
    seconds = time.perf_counter() - t0
    log(f"{progress.line() if todo else 'nothing to caption'}; wrote {job.output}")
    skipped = len(paths) - len(todo)
    return JobReport(len(paths), skipped, progress.done, progress.errors, seconds, job.output)
