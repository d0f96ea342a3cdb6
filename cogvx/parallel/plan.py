"""How to split one generation over several GPUs: pure functions of (GPUs, heads, override).

The engine is diffusers' own context parallelism (Ulysses / Ring attention over the token
sequence, `cogvx.parallel.engine`), plus a CFG split of the batch of two. Rules:
- Automatic: Ulysses over every GPU. Its all-to-all gives each rank whole heads; when the head
  count (30 on 2b, 48 on 5b / 1.5) does not divide, diffusers pads the heads to a multiple of the
  degree (the last rank gets fewer real heads) and refuses a padding of as many heads as a rank
  holds (30 heads on 7 GPUs): then Ulysses runs over the most GPUs it accepts (logged).
- The 226 text tokens (2 x 113) do not split evenly over more than 2 ranks, so the degrees run
  in diffusers' "anything" modes (uneven shards), which exclude Ulysses x Ring together.
- Ring only by override: it needs an attention backend that returns the log-sum-exp (flash,
  sage, cuDNN), which diffusers' `native` backend does not.
- CFG parallel is opt-in (`cfg=2`): the default fast_mode (FasterCache) skips the unconditional
  pass on most steps and caches per block over the whole CFG batch, so it runs with cfg = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from cogvx.errors import SetupError

TEXT_TOKENS = 226
KEYS = ("ulysses", "ring", "cfg")
OFF = ("off", "0", "1", "none")


@dataclass(frozen=True)
class Degrees:
    """Parallel degrees; their product is the number of ranks (one per GPU)."""

    ulysses: int = 1
    ring: int = 1
    cfg: int = 1

    @property
    def world(self) -> int:
        return self.ulysses * self.ring * self.cfg

    @property
    def sequence(self) -> int:
        """Ranks that split the token sequence (one CFG group)."""
        return self.ulysses * self.ring

    def describe(self) -> str:
        return f"ulysses={self.ulysses}, ring={self.ring}, cfg={self.cfg} ({self.world} ranks)"


@dataclass(frozen=True)
class ParallelPlan:
    """The decision and why (logged at setup)."""

    degrees: Degrees | None  # None: one GPU, today's single-process path
    reason: str

    @property
    def parallel(self) -> bool:
        return self.degrees is not None and self.degrees.world > 1


def parse_override(text: str) -> Degrees | None:
    """`COGVX_PARALLEL`: "ulysses=2,ring=1,cfg=2" (missing keys = 1), or "off"; SetupError names
    the variable and the allowed keys."""
    text = text.strip().lower()
    if text in OFF:
        return None
    values: dict[str, int] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        digits = value.strip()  # ASCII only: int() takes other scripts' digits, str.isdigit "²"
        numeric = digits.isascii() and digits.isdigit()
        if not sep or key not in KEYS or not numeric or int(digits) < 1:
            raise SetupError(
                f"COGVX_PARALLEL={text!r}: expected comma-separated {'/'.join(KEYS)}=<n >= 1> "
                "(e.g. ulysses=2,cfg=2) or off"
            )
        values[key] = int(digits)
    return Degrees(**values)


def ulysses_accepts(heads: int, degree: int) -> bool:
    """Whether diffusers' Ulysses all-to-all splits `heads` over `degree` ranks. Uneven heads are
    padded to a multiple of `degree`, and the padding must be fewer heads than each rank gets
    (diffusers' `_maybe_pad_qkv_head`: H_PAD < NEW_H_LOCAL)."""
    if degree <= 1 or heads % degree == 0:
        return True
    pad = degree - heads % degree
    return pad < (heads + pad) // degree


def ulysses_split(heads: int, degree: int) -> str:
    """How `heads` fall on `degree` Ulysses ranks (for the log)."""
    if heads % degree == 0:
        return f"{heads} heads, {heads // degree} per GPU"
    pad = degree - heads % degree
    per = (heads + pad) // degree
    return (
        f"{heads} heads do not divide by {degree}: {per} per GPU, {per - pad} on the last "
        f"(uneven, padded with {pad})"
    )


def check_degrees(d: Degrees, gpus: int, heads: int) -> None:
    """SetupError when `d` cannot run on `gpus` ranks with diffusers' context parallelism for a
    transformer of `heads` attention heads."""
    if d.cfg not in (1, 2):
        raise SetupError(f"COGVX_PARALLEL cfg={d.cfg}: CFG splits a batch of two, use 1 or 2")
    if d.ulysses > 1 and d.ring > 1:
        raise SetupError(
            f"COGVX_PARALLEL ulysses={d.ulysses}, ring={d.ring}: CogVideoX's {TEXT_TOKENS} text "
            "tokens split unevenly, and diffusers' uneven modes take Ulysses or Ring, not both"
        )
    if not ulysses_accepts(heads, d.ulysses):
        allowed = [n for n in range(1, max(gpus, d.ulysses) + 1) if ulysses_accepts(heads, n)]
        raise SetupError(
            f"COGVX_PARALLEL ulysses={d.ulysses}: diffusers cannot split {heads} attention heads "
            f"over {d.ulysses} ranks (the padding would reach the heads per rank); use ulysses "
            f"in {allowed}"
        )
    if d.world != gpus:
        raise SetupError(f"COGVX_PARALLEL {d.describe()}: needs {d.world} GPUs, {gpus} visible")


def auto_degrees(gpus: int, heads: int) -> tuple[Degrees, str]:
    """Ulysses over as many GPUs as diffusers splits the heads over (all of them, mostly), with
    how the heads fall on the ranks."""
    degree = max(n for n in range(1, gpus + 1) if ulysses_accepts(heads, n))
    if degree == gpus:
        return Degrees(ulysses=gpus), f"Ulysses: {ulysses_split(heads, gpus)}"
    why = f"diffusers cannot split {heads} heads over {gpus} GPUs"
    if degree == 1:
        return Degrees(), f"{why} or fewer: single process"
    return Degrees(ulysses=degree), (
        f"Ulysses on {degree} of {gpus} GPUs ({why}): {ulysses_split(heads, degree)}"
    )


def plan_parallel(gpus: int, heads: int, override: str = "") -> ParallelPlan:
    """The plan for `gpus` visible GPUs, a transformer of `heads` heads and `COGVX_PARALLEL`."""
    if override.strip():
        degrees = parse_override(override)
        if degrees is None or degrees.world == 1:
            return ParallelPlan(None, f"COGVX_PARALLEL={override.strip()}: one GPU")
        check_degrees(degrees, gpus, heads)
        return ParallelPlan(degrees, f"COGVX_PARALLEL={override.strip()}")
    if gpus <= 1:
        return ParallelPlan(None, f"{gpus} GPU visible: single process")
    degrees, why = auto_degrees(gpus, heads)
    return ParallelPlan(degrees if degrees.world > 1 else None, why)


def request_fast_mode(fast_mode: str, degrees: Degrees) -> tuple[str, str]:
    """(the fast_mode a split run uses, a log line or ""). First Block Cache decides from each
    rank's own shard, so the ranks would disagree and stall their collectives: it runs as
    balanced; with a CFG split the step caches (which see the whole CFG batch) are off."""
    if degrees.cfg > 1 and fast_mode != "off":
        return "off", f"fast_mode={fast_mode} runs as off: the step caches need the whole CFG batch"
    if fast_mode == "fast":
        return "balanced", (
            "fast_mode=fast runs as balanced across GPUs: First Block Cache decides per shard"
        )
    return fast_mode, ""
