"""The schema we write makes the real coglet validate inputs like a built image does."""

import ast
import base64
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cogvx.dev.schema import openapi_schema
from tests.support.coglet_harness import CogletServer, decode_data_uri, save_output

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "sample_runner"
WEIGHTS = "https://example.invalid/sample-weights.tar"
PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def server():
    with CogletServer(SAMPLE / "cog.yaml", env={"COG_WEIGHTS": WEIGHTS}) as srv:
        health = srv.wait_ready(timeout=60)
        assert health["status"] == "READY", srv.logs()
        yield srv


def record(body: dict) -> dict:
    assert body["status"] == "succeeded", body
    mime, data = decode_data_uri(body["output"])
    assert mime == "application/json"
    return json.loads(data)


def test_schema_has_the_go_cli_shape():
    doc = openapi_schema("predict.py:Runner", SAMPLE)
    schemas = doc["components"]["schemas"]
    inp = schemas["Input"]
    props = inp["properties"]
    assert inp["required"] == ["prompt"]
    assert [p["x-order"] for p in props.values()] == list(range(len(props)))
    assert props["steps"] == {
        "x-order": 2,
        "title": "Steps",
        "type": "integer",
        "default": 4,
        "description": "Number of steps.",
        "minimum": 1,
        "maximum": 50,
    }
    assert props["guidance_scale"]["title"] == "Guidance Scale"
    assert props["guidance_scale"]["type"] == "number"
    assert (props["offset"]["minimum"], props["offset"]["maximum"]) == (-5, 5)
    assert props["seed"]["nullable"] is True and props["seed"]["default"] is None
    assert props["image"]["format"] == "uri" and props["image"]["nullable"] is True
    assert props["loop"]["type"] == "boolean" and props["loop"]["default"] is False
    assert props["size"]["allOf"] == [{"$ref": "#/components/schemas/size"}]
    assert "title" not in props["size"] and props["size"]["default"] == "small"
    assert schemas["size"] == {
        "title": "size",
        "description": "An enumeration.",
        "enum": ["small", "large"],
        "type": "string",
    }
    assert schemas["fps"]["enum"] == [8, 16] and schemas["fps"]["type"] == "integer"
    assert schemas["Output"] == {"title": "Output", "type": "string", "format": "uri"}
    assert doc["paths"]["/predictions"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/PredictionRequest"}


def test_ready_and_valid_prediction(server):
    assert server.wait_idle(timeout=30)["status"] == "READY"
    image = "data:image/png;base64," + base64.b64encode(PNG_1PX).decode()
    status, body = server.predict(
        {"prompt": "a cat", "steps": 50, "offset": -5, "size": "large", "image": image}
    )
    assert status == 200
    out = record(body)
    assert out["weights"] == WEIGHTS  # COG_WEIGHTS reached setup(weights)
    assert out["label"] == "base"
    assert (out["steps"], out["offset"], out["size"]) == (50, -5, "large")
    assert out["guidance_scale"] == 6.0 and out["fps"] == 8 and out["loop"] is False
    assert out["image_bytes"] == len(PNG_1PX)


def test_output_data_uri_saves_to_a_file(server, tmp_path):
    _, body = server.predict({"prompt": "saved"})
    path = save_output(body["output"], tmp_path / "out.json")
    assert json.loads(path.read_text())["prompt"] == "saved"


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        ({"prompt": "x", "steps": 999}, "steps", "999 is greater than the maximum of 50"),
        ({"prompt": "x", "offset": -6}, "offset", "-6 is less than the minimum of -5"),
        ({"prompt": "x", "guidance_scale": 20.5}, "guidance_scale", "maximum of 20"),
        ({"prompt": "x", "steps": "abc"}, "steps", 'is not of type "integer"'),
        ({"prompt": "x", "loop": "yes"}, "loop", 'is not of type "boolean"'),
        ({"prompt": "x", "size": "huge"}, "size", '"huge" is not one of ["small","large"]'),
        ({"prompt": "x", "fps": 12}, "fps", "12 is not one of [8,16]"),
        ({"prompt": "x", "seed": None}, "seed", "null is not of type"),
        ({"steps": 3}, "prompt", "Field required"),
    ],
)
def test_bad_inputs_get_422(server, inputs, field, message):
    status, body = server.predict(inputs)
    assert status == 422, body
    detail = body["detail"]
    assert [d["loc"] for d in detail] == [["body", "input", field]], detail
    assert message in detail[0]["msg"]


def test_integer_json_for_a_float_input_arrives_as_int(server):
    """coglet does not convert: predictors must call float() on float inputs."""
    out = record(server.predict({"prompt": "x", "guidance_scale": 3})[1])
    assert out["guidance_scale"] == 3 and isinstance(out["guidance_scale"], int)


def test_unknown_inputs_are_stripped(server):
    status, body = server.predict({"prompt": "x", "not_an_input": 1})
    assert status == 200 and record(body)["prompt"] == "x"


def test_value_error_fails_the_prediction_and_server_stays_ready(server):
    status, body = server.predict({"prompt": "fail"})
    assert status == 200
    assert body["status"] == "failed"
    assert "ValueError: prompt: 'fail' is not allowed; use any other text" in body["error"]
    assert server.wait_idle(timeout=30)["status"] == "READY"
    status, body = server.predict({"prompt": "after"})
    assert status == 200 and record(body)["prompt"] == "after"


def test_busy_server_refuses_a_second_prediction_and_cancel_frees_it(server):
    prediction_id = server.predict_async({"prompt": "sleep:30"})
    # coglet drops a cancel that reaches the worker before run() starts: wait until it runs.
    server.wait_log(prediction_id, "sleeping 30 s", timeout=30)
    assert server.health()["status"] == "BUSY"
    status, body = server.predict({"prompt": "x"}, wait_busy=False)
    assert status == 409, body
    assert server.cancel(prediction_id)[0] == 200
    assert server.wait_idle(timeout=10)["status"] == "READY"
    status, body = server.predict({"prompt": "after cancel"})
    assert status == 200 and record(body)["prompt"] == "after cancel"


def test_setup_failure_is_reported():
    with CogletServer(SAMPLE / "cog.yaml", env={"COG_WEIGHTS": "fail:x"}) as srv:
        health = srv.wait_ready(timeout=60)
        assert health["status"] == "SETUP_FAILED"
        assert "weights fail:x: cannot be loaded" in health["setup"]["logs"]
        status, body = srv.predict({"prompt": "x"})
        assert status == 503, body
        assert "cannot be loaded" in srv.logs()
    assert srv.proc.poll() is not None  # stopped on exit


def test_second_config_runs_beside_the_first(server):
    """A Runner subclass from another config, its own workdir, and config `environment:`."""
    with CogletServer(SAMPLE / "cog.alt.yaml") as alt:
        assert alt.wait_ready(timeout=60)["status"] == "READY", alt.logs()
        alt_out = record(alt.predict({"prompt": "a"})[1])
        base_out = record(server.predict({"prompt": "b"})[1])
        status, body = alt.predict({"prompt": "a", "steps": 0})
        assert status == 422 and body["detail"][0]["loc"][-1] == "steps"
    assert alt_out["label"] == "alt" and base_out["label"] == "base"
    assert alt_out["greeting"] == "hello from cog.alt.yaml" and base_out["greeting"] is None
    assert alt_out["weights"] is None
    assert alt_out["cwd"] != base_out["cwd"]
    assert (Path(alt.cwd) / ".cog" / "openapi_schema.json").parts[-2:] == (
        ".cog",
        "openapi_schema.json",
    )


def test_harness_moves_to_a_new_port_when_its_free_port_is_taken():
    srv = CogletServer(SAMPLE / "cog.yaml")
    with socket.socket() as taken:
        taken.bind((srv.host, srv.port))  # someone else got the port first
        with srv:
            assert srv.wait_ready(timeout=60)["status"] == "READY"
            assert srv.port != taken.getsockname()[1]


class _Flaky(BaseHTTPRequestHandler):
    """/health-check: the 1st request is dropped unanswered, the 2nd gets 503, then READY."""

    count = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).count += 1
        if self.count == 1:
            self.close_connection = True  # no status line: the client's read fails (OSError)
            return
        status = 503 if self.count == 2 else 200
        body = json.dumps({"status": "READY"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_harness_wait_idle_polls_on_through_failed_health_checks():
    """A loaded machine can time out or fail a health check: wait_idle keeps polling."""
    flaky = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=flaky.serve_forever, daemon=True).start()
    try:
        srv = CogletServer(SAMPLE / "cog.yaml", port=flaky.server_address[1])
        assert srv.wait_idle(timeout=30)["status"] == "READY"
        assert _Flaky.count == 3
    finally:
        flaky.shutdown()
        flaky.server_close()


def serve(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "serve.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_reports_config_errors(tmp_path):
    missing = serve(str(tmp_path / "cog.nope.yaml"))
    assert missing.returncode == 2 and "cog.nope.yaml: no such file" in missing.stderr
    (tmp_path / "cog.yaml").write_text("build:\n  gpu: false\n")
    no_run = serve(str(tmp_path / "cog.yaml"))
    assert no_run.returncode == 2 and "no top-level `run:`" in no_run.stderr
    (tmp_path / "cog.yaml").write_text('run: "predict_x/predict.py:Runner"\n')
    no_file = serve(str(tmp_path / "cog.yaml"))
    assert no_file.returncode == 2 and "predict_x/predict.py, which does not exist" in (
        no_file.stderr
    )


def test_write_schema_only_and_deprecated_predict_key(tmp_path):
    (tmp_path / "predict.py").write_text((SAMPLE / "predict.py").read_text())
    (tmp_path / "cog.yaml").write_text('predict: "predict.py:RunnerAlt"\n')
    done = serve(str(tmp_path / "cog.yaml"), "--write-schema-only")
    assert done.returncode == 0, done.stderr
    assert "`predict:` is deprecated" in done.stderr
    written = Path(done.stdout.strip())
    assert written == tmp_path / ".cog" / "openapi_schema.json"
    assert json.loads(written.read_text()) == openapi_schema("predict.py:Runner", SAMPLE)


def top_level_classes(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef)}


ROOT_CONFIGS = sorted(REPO.glob("cog*.yaml"))


@pytest.mark.parametrize("config", ROOT_CONFIGS, ids=[c.name for c in ROOT_CONFIGS])
def test_repo_config_yields_a_schema(config):
    """Each model config names a top-level class (the Go CLI needs one) and its schema builds."""
    from tools.serve import read_config

    ref, root, _ = read_config(config)
    rel, cls = ref.split(":")
    assert cls in top_level_classes(root / rel), f"{config.name}: {cls} not in {rel}"
    doc = openapi_schema(ref, root)
    props = doc["components"]["schemas"]["Input"]["properties"]
    assert props, f"{config.name}: no inputs"
    assert all("title" in p or "allOf" in p for p in props.values())
