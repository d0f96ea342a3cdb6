"""Input checks: integer coercion, the seed range, bounded values in messages and logs."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest
import torch

from cogvx import checks
from cogvx.dev.schema import openapi_schema
from cogvx.gpu import cpu_generator, resolve_seed
from cogvx.log import ClipFilter, bound_library_logs, clip

REPO = Path(__file__).resolve().parents[1]
RUNNERS = [
    "predict_t2v/predict.py:Runner",
    "predict_t2v/predict.py:Runner2b",
    "predict_t2v/predict.py:Runner15",
    "predict_i2v/predict.py:Runner",
    "predict_i2v/predict.py:Runner15",
    "predict_caption/predict.py:Runner",
    "predict_enhance/predict.py:Runner",
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7, 7), (7.0, 7), (1, 1), (100.0, 100), (-0.0, None), (50, 50)],
)
def test_integer_accepts_ints_and_integral_floats(value, expected):
    if expected is None:  # -0.0 is integral but below the range
        with pytest.raises(ValueError, match=r"steps=-0\.0 is out of range; allowed: 1 to 100"):
            checks.integer("steps", value, 1, 100)
        return
    got = checks.integer("steps", value, 1, 100)
    assert got == expected and type(got) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (7.5, "steps=7.5 is not a whole number; allowed: integers 1 to 100"),
        (0.1, "steps=0.1 is not a whole number"),
        (math.inf, "steps=inf is not a whole number"),
        (math.nan, "steps=nan is not a whole number"),
        (True, "steps=True is not an integer; allowed: integers 1 to 100"),
        (False, "steps=False is not an integer"),
        ("7", "steps='7' is not an integer"),
        (None, "steps=None is not an integer"),
        ([7], "steps=[7] is not an integer"),
        (0, "steps=0 is out of range; allowed: 1 to 100"),
        (101.0, "steps=101.0 is out of range; allowed: 1 to 100"),
        (1e30, "steps=1e+30 is out of range; allowed: 1 to 100"),
        (-(2**63) - 1, "steps=-9223372036854775809 is out of range"),
    ],
)
def test_integer_refuses_naming_the_input_value_and_range(value, message):
    with pytest.raises(ValueError) as err:
        checks.integer("steps", value, 1, 100)
    assert message in str(err.value)


@pytest.mark.parametrize(("value", "expected"), [(49, 49), (49.0, 49), (9.0, 9)])
def test_integer_choice_coerces_integral_floats(value, expected):
    got = checks.integer_choice("num_frames", value, [9, 17, 49])
    assert got == expected and type(got) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (9.5, "num_frames=9.5 is not a whole number; allowed: one of [9, 17, 49]"),
        (True, "num_frames=True is not an integer; allowed: one of [9, 17, 49]"),
        (50, "num_frames=50 is not allowed; choose one of [9, 17, 49]"),
        (50.0, "num_frames=50 is not allowed; choose one of [9, 17, 49]"),
    ],
)
def test_integer_choice_refuses(value, message):
    with pytest.raises(ValueError) as err:
        checks.integer_choice("num_frames", value, [9, 17, 49])
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, 0), (7, 7), (7.0, 7), (2**32 - 1, 2**32 - 1), (4294967295.0, 2**32 - 1)],
)
def test_seed_accepts_0_to_2_32_minus_1(value, expected):
    got = checks.seed(value)
    assert got == expected and (got is None or type(got) is int)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (-1, "seed=-1 is out of range"),
        (2**32, "seed=4294967296 is out of range"),
        (2**64, "seed=18446744073709551616 is out of range"),
        (float(2**64), "seed=1.8446744073709552e+19 is out of range"),
        (-(2**63) - 1, "seed=-9223372036854775809 is out of range"),
        (1e30, "seed=1e+30 is out of range"),
        (7.5, "seed=7.5 is not a whole number"),
        (True, "seed=True is not an integer"),
        ("7", "seed='7' is not an integer"),
    ],
)
def test_seed_refuses_naming_seed_the_value_and_the_range(value, shown):
    with pytest.raises(ValueError) as err:
        checks.seed(value)
    message = str(err.value)
    assert message.startswith(shown), message
    assert "allowed: integers 0 to 4294967295 (leave blank for a random seed)" in message


def test_resolve_seed_checks_and_logs_an_int():
    lines: list[str] = []
    assert resolve_seed(7.0, lines.append) == 7 and lines == ["seed: 7"]
    with pytest.raises(ValueError, match="seed=-1 is out of range"):
        resolve_seed(-1, lines.append)
    drawn = resolve_seed(None, lines.append)
    assert 0 <= drawn <= checks.SEED_MAX and lines[-1] == f"seed: {drawn}"


def test_every_seed_in_range_seeds_torch_and_integral_floats_give_the_same_noise():
    for seed in (0, checks.SEED_MAX):
        torch.randn(2, generator=cpu_generator(seed))
    a = torch.randn(4, generator=cpu_generator(checks.seed(7.0)))
    assert torch.equal(a, torch.randn(4, generator=cpu_generator(7)))


@pytest.mark.parametrize("ref", RUNNERS)
def test_every_runner_declares_the_seed_range_in_its_schema(ref):
    props = openapi_schema(ref, REPO)["components"]["schemas"]["Input"]["properties"]
    seed = props["seed"]
    assert (seed["type"], seed["minimum"], seed["maximum"]) == ("integer", 0, checks.SEED_MAX)
    assert "4294967295" in seed["description"]


def test_clip_keeps_short_text_and_bounds_long_text():
    assert clip("a cat") == "a cat"
    assert clip("x" * 200) == "x" * 200
    long = clip("x" * 1_000_000)
    assert long == "x" * 200 + "… (1000000 chars)"
    assert clip("abcdef", 3) == "abc… (6 chars)"


def test_messages_quote_a_bounded_value():
    huge = "y" * 1_000_000
    for call in (
        lambda: checks.choice("output_format", huge, ["mp4"]),
        lambda: checks.integer("steps", huge, 1, 100),
        lambda: checks.integer_choice("upscale", huge, [1, 2, 4]),
        lambda: checks.seed(huge),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert len(str(err.value)) < 400 and "(1000002 chars)" in str(err.value)


def test_in_range_message_is_unchanged_for_numbers():
    with pytest.raises(
        ValueError, match=r"^guidance_scale=25\.0 is out of range; allowed: 0 to 20$"
    ):
        checks.in_range("guidance_scale", 25.0, 0, 20)


def test_library_log_records_are_clipped(capsys):
    logger = logging.getLogger("cogvx-test-library")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        bound_library_logs(limit=50, names=("cogvx-test-library",))
        bound_library_logs(limit=50, names=("cogvx-test-library",))  # idempotent
        assert sum(isinstance(f, ClipFilter) for f in handler.filters) == 1
        logger.warning("truncated: %s", "z" * 100_000)
        logger.warning("short %s", "line")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert re.fullmatch(r"truncated: z{39}… \(100011 chars\)\nshort line\n", err), err[:300]


def test_diffusers_and_transformers_handlers_get_the_filter():
    import diffusers  # noqa: F401  (configures its handler)
    import transformers  # noqa: F401

    bound_library_logs()
    for name in ("diffusers", "transformers"):
        handlers = logging.getLogger(name).handlers
        assert handlers and all(
            any(isinstance(f, ClipFilter) for f in h.filters) for h in handlers
        ), name


def test_text_with_a_lone_surrogate_names_the_input():
    # JSON allows "\ud800" escapes, and Python decodes them to a lone surrogate
    with pytest.raises(checks.InputError, match=r"prompt holds an invalid character at position 2"):
        checks.prompt("a \ud800 cat")
    with pytest.raises(checks.InputError, match=r"negative_prompt holds an invalid character"):
        checks.plain_text("\udfff", "negative_prompt")
    assert checks.plain_text(None, "negative_prompt") == ""
    assert checks.prompt("  un chat 猫 🐈 ") == "un chat 猫 🐈"
