"""The predictors' Input literals agree with the package's tables.

Cog's static schema parser reads only literals, so `ge=`, `le=`, `choices=` and defaults are
written out in `predict_*/predict.py`; the package checks the same ranges at run time. These
tests hold the copies equal: the variants table (frame choices, defaults, fps), each service's
RANGES / CHOICES, the seed range, and the `Inputs` blocks T2V and I2V both carry."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

from cogvx.checks import SEED_MAX
from cogvx.cogvlm2.sampling import STRATEGIES
from cogvx.dev.schema import openapi_schema
from cogvx.models import get_variant
from cogvx.services import caption, enhance_request
from cogvx.services import video as video_service

ROOT = Path(__file__).resolve().parents[1]
REFS = sorted({yaml.safe_load(p.read_text())["run"] for p in ROOT.glob("cog*.yaml")})
VIDEO_REFS = [r for r in REFS if r.startswith(("predict_t2v/", "predict_i2v/"))]
# Inputs the T2V and I2V blocks may word differently, and why.
SHARED_DIFFERENCES = {"prompt": "I2V asks what happens (the image already shows the scene)"}


def _runner_class(ref: str) -> type:
    path, cls = ref.split(":")
    spec = importlib.util.spec_from_file_location(f"_runner_{abs(hash(ref))}", ROOT / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, cls)


def inputs(ref: str) -> dict[str, dict]:
    """name -> {default, minimum, maximum, choices} as the server's OpenAPI schema states them."""
    schemas = openapi_schema(ref, ROOT)["components"]["schemas"]
    out = {}
    for name, prop in schemas["Input"]["properties"].items():
        item = {k: prop[k] for k in ("default", "minimum", "maximum") if k in prop}
        for ref_ in prop.get("allOf", []):
            item["choices"] = schemas[ref_["$ref"].rsplit("/", 1)[1]]["enum"]
        out[name] = item
    return out


def _check_tables(got: dict[str, dict], ranges: dict, choices: dict) -> None:
    for name, (lo, hi) in ranges.items():
        if name in got:
            assert (got[name].get("minimum"), got[name].get("maximum")) == (lo, hi), name
    for name, allowed in choices.items():
        if name in got:
            assert got[name].get("choices") == list(allowed), name
    assert (got["seed"]["minimum"], got["seed"]["maximum"]) == (0, SEED_MAX)


def test_every_config_is_checked():
    assert len(REFS) == 8 and len(VIDEO_REFS) == 5


@pytest.mark.parametrize("ref", VIDEO_REFS)
def test_video_runner_inputs_match_the_variants_table(ref):
    v = get_variant(_runner_class(ref).MODEL)
    got = inputs(ref)
    if "num_frames" in got:
        assert got["num_frames"]["choices"] == v.allowed_frames
        assert got["num_frames"]["default"] == v.default_frames
    else:  # a model with one frame count (5b-I2V: 49) offers no choice
        assert v.allowed_frames == [v.default_frames]
    assert got["fps"]["default"] == v.fps
    assert got["num_inference_steps"]["default"] == v.default_steps
    assert got["guidance_scale"]["default"] == v.default_guidance
    assert got["use_dynamic_cfg"]["default"] == v.dynamic_cfg
    ranges = {k: r for k, r in video_service.RANGES.items() if k != "strength" or "video" in got}
    assert set(ranges) - set(got) <= {"strength"}
    _check_tables(got, ranges, video_service.CHOICES)
    fast = {"default": video_service.DEFAULTS["fast_mode"], "choices": ["off", "balanced", "fast"]}
    assert got["fast_mode"] == fast
    assert got["extend_prompt"] == {"default": False}
    assert list(video_service.CHOICES["fast_mode"]) == fast["choices"]


def test_enhance_runner_inputs_match_its_checks():
    got = inputs("predict_enhance/predict.py:Runner")
    assert set(enhance_request.RANGES) <= set(got) and set(enhance_request.CHOICES) <= set(got)
    _check_tables(got, enhance_request.RANGES, enhance_request.CHOICES)


def test_caption_batch_runner_inputs_match_its_checks():
    from cogvx.cogvlm2.batching import MAX_BATCH

    got = inputs("predict_caption/predict.py:BatchRunner")
    single = inputs("predict_caption/predict.py:Runner")
    assert set(got) == {"videos", "prompt", "strategy", "max_new_tokens", "batch_size"}
    for name in ("prompt", "strategy", "max_new_tokens"):
        assert got[name] == single[name], name
    assert got["batch_size"] == {"default": 0, "minimum": 0, "maximum": MAX_BATCH}


def test_caption_runner_inputs_match_its_checks():
    got = inputs("predict_caption/predict.py:Runner")
    assert set(caption.RANGES) <= set(got)
    _check_tables(got, caption.RANGES, {"strategy": STRATEGIES})


def test_a_drifted_literal_is_caught():
    got = {"fps": {"minimum": 1, "maximum": 30}, "seed": {"minimum": 0, "maximum": SEED_MAX}}
    with pytest.raises(AssertionError, match="fps"):
        _check_tables(got, {"fps": (1, 60)}, {})


def _inputs_block(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Inputs")
    return {s.targets[0].id: ast.unparse(s.value) for s in cls.body if isinstance(s, ast.Assign)}


def test_shared_inputs_blocks_of_t2v_and_i2v_stay_identical():
    t2v = _inputs_block(ROOT / "predict_t2v/predict.py")
    i2v = _inputs_block(ROOT / "predict_i2v/predict.py")
    assert set(t2v) - set(i2v) == {"video", "strength"}  # video-to-video is a T2V option
    assert set(i2v) - set(t2v) == {"image"}
    differ = {k for k in set(t2v) & set(i2v) if t2v[k] != i2v[k]}
    assert differ == set(SHARED_DIFFERENCES), {k: (t2v[k], i2v[k]) for k in differ}


def test_every_config_is_a_row_of_the_deployments_table():
    from cogvx.models import DEPLOYMENTS, VARIANTS

    configs = {p.name: yaml.safe_load(p.read_text())["run"] for p in ROOT.glob("cog*.yaml")}
    assert {d.config: d.run for d in DEPLOYMENTS} == configs
    for d in DEPLOYMENTS:
        if d.model in VARIANTS:  # a CogVideoX runner loads the variant its row names
            assert _runner_class(d.run).MODEL == d.model
    assert {d.model for d in DEPLOYMENTS} == set(VARIANTS) | {"caption", "enhance"}
