"""The web page's form, read from every runner's real schema, and its requests (no gradio)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cogvx.dev.schema import openapi_schema
from cogvx.webui.client import ServerError, save_data_uri, show_output
from cogvx.webui.form import (
    MAIN_INPUTS,
    Field,
    FormError,
    fields_from_openapi,
    file_to_data_uri,
    layout,
    output_is_file,
    to_request,
)
from tools.serve import read_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in ROOT.glob("cog*.yaml"))


def _schema(config: str) -> dict:
    ref, root, _ = read_config(ROOT / config)
    return openapi_schema(ref, root)


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict]:
    return {config: _schema(config) for config in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS)
def test_every_runner_input_becomes_a_field_of_its_type(schemas, config):
    schema = schemas[config]
    inputs = schema["components"]["schemas"]["Input"]
    fields = fields_from_openapi(schema)
    assert [f.name for f in fields] == sorted(
        inputs["properties"], key=lambda n: inputs["properties"][n]["x-order"]
    )
    for f in fields:
        prop = inputs["properties"][f.name]
        assert f.default == prop.get("default")
        assert f.required == (f.name in inputs.get("required", []))
        if "allOf" in prop:  # Cog's choices: an enum in components
            enum_name = prop["allOf"][0]["$ref"].rsplit("/", 1)[-1]
            assert f.kind == "choice"
            assert f.choices == tuple(schema["components"]["schemas"][enum_name]["enum"])
            assert f.default in f.choices
        else:
            expected = {"integer": "integer", "number": "number", "boolean": "boolean"}
            kind = "file" if prop.get("format") == "uri" else expected.get(prop["type"], "text")
            assert f.kind == kind
            assert (f.minimum, f.maximum) == (prop.get("minimum"), prop.get("maximum"))
        assert f.label and f.label != f.name or "_" not in f.name


def test_video_runners_show_prompt_first_and_their_main_inputs(schemas):
    main, advanced = layout(fields_from_openapi(schemas["cog.yaml"]))
    assert [f.name for f in main] == [
        "prompt",
        "extend_prompt",
        "num_frames",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "fast_mode",
    ]
    # T2V's optional video-to-video input and the output options are advanced
    assert {"video", "negative_prompt", "output_format", "lora_url"} <= {f.name for f in advanced}
    main_i2v, _ = layout(fields_from_openapi(schemas["cog.i2v.yaml"]))
    assert [f.name for f in main_i2v][:2] == ["prompt", "image"]
    assert all(f.name in MAIN_INPUTS for f in main_i2v)


def test_the_caption_runner_shows_its_video_and_returns_text(schemas):
    main, _ = layout(fields_from_openapi(schemas["cog.caption.yaml"]))
    assert "video" in [f.name for f in main]
    assert not output_is_file(schemas["cog.caption.yaml"])
    assert output_is_file(schemas["cog.yaml"]) and output_is_file(schemas["cog.i2v.yaml"])


def test_seed_slider_and_number_boxes(schemas):
    by_name = {f.name: f for f in fields_from_openapi(schemas["cog.yaml"])}
    assert by_name["num_inference_steps"].slider and by_name["guidance_scale"].slider
    assert not by_name["seed"].slider  # 0 .. 2^32 - 1: a number box
    assert by_name["seed"].nullable and by_name["seed"].default is None


@pytest.fixture(scope="module")
def t2v(schemas) -> list[Field]:
    return fields_from_openapi(schemas["cog.yaml"])


def test_request_leaves_blank_optionals_to_the_server_and_types_numbers(t2v):
    values = {f.name: f.default for f in t2v}
    values.update(prompt="a fox", seed=7.0, num_inference_steps=2.0, upscale=2, lora_url="")
    request = to_request(t2v, values)
    assert request["seed"] == 7 and isinstance(request["seed"], int)
    assert request["num_inference_steps"] == 2 and isinstance(request["num_inference_steps"], int)
    assert request["upscale"] == 2 and isinstance(request["upscale"], int)
    assert isinstance(request["guidance_scale"], float)
    assert request["negative_prompt"] == ""  # a text input with a default: sent as typed
    assert "lora_url" not in request and "video" not in request  # blank optionals: left out
    values["seed"] = None
    assert "seed" not in to_request(t2v, values)  # blank seed: the server randomizes


def test_request_refuses_what_it_cannot_send(t2v):
    values = {f.name: f.default for f in t2v}
    with pytest.raises(FormError, match="prompt: required"):
        to_request(t2v, {**values, "prompt": "  "})
    with pytest.raises(FormError, match=r"seed: 7\.5 is not a whole number"):
        to_request(t2v, {**values, "prompt": "a", "seed": 7.5})
    with pytest.raises(FormError, match="seed: 'twelve' is not a whole number"):
        to_request(t2v, {**values, "prompt": "a", "seed": "twelve"})  # the seed box is text
    for big in ("inf", "-inf", "1e400"):  # int() of these would raise OverflowError
        with pytest.raises(FormError, match=f"seed: '{big}' is not a whole number"):
            to_request(t2v, {**values, "prompt": "a", "seed": big})
    with pytest.raises(FormError, match="guidance_scale: 'x' is not a number"):
        to_request(t2v, {**values, "prompt": "a", "guidance_scale": "x"})
    assert to_request(t2v, {**values, "prompt": "a", "seed": " 12 "})["seed"] == 12


def test_an_upload_is_sent_as_a_data_uri(tmp_path, schemas):
    image = tmp_path / "frame.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n-not-decoded-here")
    fields = fields_from_openapi(schemas["cog.i2v.yaml"])
    values = {f.name: f.default for f in fields}
    request = to_request(fields, {**values, "prompt": "a", "image": str(image)})
    head, payload = request["image"].split(",", 1)
    assert head == "data:image/png;base64"
    assert base64.b64decode(payload) == image.read_bytes()
    assert file_to_data_uri(image) == request["image"]
    with pytest.raises(FormError, match="image: required"):
        to_request(fields, {**values, "prompt": "a", "image": None})


def test_schemas_the_page_cannot_show_are_refused():
    with pytest.raises(FormError, match="components/schemas/Input"):
        fields_from_openapi({"openapi": "3.0.2"})
    bad = {"components": {"schemas": {"Input": {"properties": {"x": {"type": "array"}}}}}}
    with pytest.raises(FormError, match="input 'x' has type 'array'"):
        fields_from_openapi(bad)
    dangling = {"components": {"schemas": {"Input": {"properties": {"m": {"allOf": [
        {"$ref": "#/components/schemas/nope"}]}}}}}}  # fmt: skip
    with pytest.raises(FormError, match="'#/components/schemas/nope'"):
        fields_from_openapi(dangling)


def test_outputs_are_split_into_player_download_and_text(tmp_path):
    mp4 = "data:video/mp4;base64," + base64.b64encode(b"mp4 bytes").decode()
    video, path, text = show_output(mp4, tmp_path / "out-1")
    assert video == path == tmp_path / "out-1.mp4" and path.read_bytes() == b"mp4 bytes"
    assert text == ""
    gif = "data:image/gif;base64," + base64.b64encode(b"GIF89a").decode()
    video, path, _ = show_output(gif, tmp_path / "out-2")
    assert video is None and path == tmp_path / "out-2.gif"  # no player: a download
    assert show_output("a cat on a sofa", tmp_path / "out-3") == (None, None, "a cat on a sofa")
    with pytest.raises(ServerError, match="not a base64 data: URI"):
        save_data_uri("data:video/mp4,plain", tmp_path / "x")
    with pytest.raises(ServerError, match="bad base64"):
        save_data_uri("data:video/mp4;base64,@@@", tmp_path / "x")
