"""The multi-GPU degree planner as a table: GPUs x heads x COGVX_PARALLEL -> degrees or refusal."""

from __future__ import annotations

import pytest

from cogvx.errors import SetupError
from cogvx.parallel import choose_plan
from cogvx.parallel.plan import (
    Degrees,
    parse_override,
    plan_parallel,
    request_fast_mode,
    ulysses_accepts,
)

HEADS_2B, HEADS_5B = 30, 48


@pytest.mark.parametrize(
    ("gpus", "heads", "override", "degrees", "reason"),
    [
        (0, HEADS_5B, "", None, "0 GPU visible: single process"),
        (1, HEADS_5B, "", None, "1 GPU visible: single process"),
        (2, HEADS_5B, "", Degrees(ulysses=2), "48 heads, 24 per GPU"),
        (4, HEADS_5B, "", Degrees(ulysses=4), "48 heads, 12 per GPU"),
        (8, HEADS_5B, "", Degrees(ulysses=8), "48 heads, 6 per GPU"),
        (3, HEADS_2B, "", Degrees(ulysses=3), "30 heads, 10 per GPU"),
        (4, HEADS_2B, "", Degrees(ulysses=4), "30 heads do not divide by 4: 8 per GPU, 6 on"),
        (8, HEADS_2B, "", Degrees(ulysses=8), "4 per GPU, 2 on the last (uneven, padded with 2)"),
        (7, HEADS_2B, "", Degrees(ulysses=6), "Ulysses on 6 of 7 GPUs (diffusers cannot split"),
        (16, HEADS_2B, "", Degrees(ulysses=15), "Ulysses on 15 of 16 GPUs"),
        (9, HEADS_5B, "", Degrees(ulysses=8), "Ulysses on 8 of 9 GPUs"),
        (7, HEADS_5B, "", Degrees(ulysses=7), "7 per GPU, 6 on the last"),
        (3, 2, "", Degrees(ulysses=2), "Ulysses on 2 of 3 GPUs"),
        (2, 1, "", None, "cannot split 1 heads over 2 GPUs or fewer: single process"),
        (2, HEADS_5B, "cfg=2", Degrees(cfg=2), "COGVX_PARALLEL=cfg=2"),
        (8, HEADS_5B, "ulysses=4,cfg=2", Degrees(ulysses=4, cfg=2), "COGVX_PARALLEL"),
        (4, HEADS_2B, "ring=4", Degrees(ring=4), "COGVX_PARALLEL=ring=4"),
        (8, HEADS_5B, "off", None, "one GPU"),
        (8, HEADS_5B, "ulysses=1", None, "one GPU"),
    ],
)
def test_plan_table(gpus, heads, override, degrees, reason):
    plan = plan_parallel(gpus, heads, override)
    assert plan.degrees == degrees
    assert reason in plan.reason
    assert plan.parallel == (degrees is not None)


@pytest.mark.parametrize(
    ("gpus", "override", "message"),
    [
        (4, "ulysses=2,ring=2", "Ulysses or Ring, not both"),
        (4, "cfg=4", "CFG splits a batch of two"),
        (4, "ulysses=2", "needs 2 GPUs, 4 visible"),
        (2, "ulysses=4", "needs 4 GPUs, 2 visible"),
        (2, "tensor=2", "expected comma-separated ulysses/ring/cfg"),
        (2, "ulysses=two", "expected comma-separated"),
        (2, "ulysses=0", "expected comma-separated"),
        (2, "ulysses", "expected comma-separated"),
        (2, "ulysses=\u00b2", "expected comma-separated"),  # str.isdigit takes it, int() not
        (2, "ulysses=\u0662", "expected comma-separated"),  # int() reads an Arabic-Indic 2
        (
            9,
            "ulysses=9",
            r"cannot split 48 attention heads over 9 ranks.*\[1, 2, 3, 4, 5, 6, 7, 8\]",
        ),
    ],
)
def test_impossible_overrides_are_refused_at_setup(gpus, override, message):
    with pytest.raises(SetupError, match=message):
        plan_parallel(gpus, HEADS_5B, override)


def test_a_2b_override_diffusers_cannot_pad_is_refused():
    with pytest.raises(SetupError, match=r"ulysses=7: .*30 attention heads over 7 ranks"):
        plan_parallel(7, HEADS_2B, "ulysses=7")


def _diffusers_pads(heads: int, degree: int, monkeypatch) -> bool:
    """diffusers' own head padding (the Ulysses all-to-all's first step) for a group of `degree`
    ranks: True when it accepts."""
    import torch
    from diffusers.models import attention_dispatch

    monkeypatch.setattr(attention_dispatch.dist, "get_world_size", lambda group=None: degree)
    try:
        attention_dispatch._maybe_pad_qkv_head(torch.zeros(1, 1, heads, 1), heads, None)
    except AssertionError:
        return False
    return True


def test_ulysses_accepts_what_diffusers_pads(monkeypatch):
    for heads in (1, 2, 30, 48):
        for degree in range(1, 17):
            diffusers = _diffusers_pads(heads, degree, monkeypatch)
            assert ulysses_accepts(heads, degree) == diffusers, (heads, degree)


def test_override_parsing():
    assert parse_override(" Ulysses=2, CFG=2 ") == Degrees(ulysses=2, cfg=2)
    assert parse_override("ring=3") == Degrees(ring=3)
    for off in ("off", "0", "1", "none"):
        assert parse_override(off) is None
    d = Degrees(ulysses=4, cfg=2)
    assert (d.world, d.sequence) == (8, 4)
    assert d.describe() == "ulysses=4, ring=1, cfg=2 (8 ranks)"


@pytest.mark.parametrize(
    ("mode", "degrees", "runs", "note"),
    [
        ("off", Degrees(ulysses=2), "off", ""),
        ("balanced", Degrees(ulysses=2), "balanced", ""),
        ("fast", Degrees(ulysses=2), "balanced", "First Block Cache decides per shard"),
        ("off", Degrees(cfg=2), "off", ""),
        ("balanced", Degrees(cfg=2), "off", "the step caches need the whole CFG batch"),
        ("fast", Degrees(ulysses=2, cfg=2), "off", "whole CFG batch"),
    ],
)
def test_fast_mode_under_a_split(mode, degrees, runs, note):
    used, line = request_fast_mode(mode, degrees)
    assert used == runs
    assert (note in line) if note else line == ""


def test_model_head_counts_come_from_the_released_configs():
    plan, device = choose_plan("t2v-2b", 4, "")
    assert (plan.degrees, device) == (Degrees(ulysses=4), "cuda")
    assert "30 heads" in plan.reason
    plan, _ = choose_plan("t2v-1.5", 4, "")
    assert "48 heads, 12 per GPU" in plan.reason


def test_without_cuda_only_an_explicit_override_starts_cpu_ranks():
    assert choose_plan("t2v-5b", 0, "")[0].degrees is None
    plan, device = choose_plan("t2v-5b", 0, "cfg=2")
    assert (plan.degrees, device) == (Degrees(cfg=2), "cpu")
    assert choose_plan("t2v-5b", 0, "off")[0].degrees is None
