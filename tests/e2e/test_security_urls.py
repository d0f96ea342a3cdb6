"""Hostile `lora_url`s against the real T2V server (coglet): internal addresses are refused before
any connection, with one message for every failure, no response bytes quoted, bounded messages.

The server runs with private URLs off except one allow-listed loopback host:port, the "allowed"
server (a stand-in for a public host, so redirects out of it can be tried without real
networking). The "internal" server holds a secret and must never see a request.
"""

from __future__ import annotations

import json

import pytest

from cogvx.net.urls import ALLOW_PRIVATE_ENV, fetch_failed
from tests.support.coglet_harness import CogletServer, free_port
from tests.support.e2e import predict_failed, predict_ok, runner_env
from tests.support.loras import save_diffusers_lora
from tests.support.weights_server import WeightsServer

SECRET = b"INTERNAL-SECRET-" * 64
BASE = {"prompt": "a cat", "num_frames": 9, "seed": 1}
METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


@pytest.fixture(scope="module")
def internal():
    """A loopback service holding a secret, as a metadata endpoint or an admin port would."""
    with WeightsServer({"/secret": SECRET, "/secret.safetensors": SECRET}) as srv:
        yield srv


@pytest.fixture(scope="module")
def allowed(internal, tmp_path_factory):
    """The allow-listed host: a good LoRA, secret-looking text, redirects out to internal."""
    lora = save_diffusers_lora(tmp_path_factory.mktemp("sec") / "style.safetensors")
    files = {"/style.safetensors": lora, "/notes.safetensors": SECRET}
    with WeightsServer(files) as srv:
        srv.redirects.update(
            {
                "/to-internal.safetensors": internal.url("/secret.safetensors"),
                "/chain.safetensors": srv.url("/to-internal.safetensors"),
                "/to-metadata.safetensors": METADATA,
                "/to-file.safetensors": "file:///etc/passwd",
            }
        )
        yield srv


@pytest.fixture(scope="module")
def server(weights_server, allowed, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec-t2v")
    # operator URL on loopback: not restricted
    env = runner_env(tmp, weights_server.serve("t2v-5b"))
    env[ALLOW_PRIVATE_ENV] = f"127.0.0.1:{allowed.port}"
    with CogletServer("cog.yaml", env=env) as server:
        assert server.wait_ready(timeout=300)["status"] == "READY", server.logs()
        yield server


def refused(server, url: str) -> str:
    """Run a prediction with lora_url=url; it must fail with the one message; return it."""
    error = predict_failed(server, lora_url=url, **BASE)
    assert fetch_failed("lora_url", url) in error, error
    return error


def no_secret(server, internal) -> None:
    assert "INTERNAL-SECRET" not in server.logs()
    assert internal.requests == []  # the internal server's access log is empty


def test_an_internal_address_is_refused_before_any_request(server, internal):
    url = internal.url("/secret") + "?token=hush"
    error = refused(server, url)
    assert "INTERNAL-SECRET" not in error and "hush" not in error
    no_secret(server, internal)


def test_a_closed_port_gives_the_same_message_as_an_open_one(server, internal):
    open_error = refused(server, internal.url("/secret"))
    closed = f"http://127.0.0.1:{free_port()}/secret"
    closed_error = refused(server, closed)
    assert open_error.replace(internal.url("/secret"), "URL") == closed_error.replace(closed, "URL")
    no_secret(server, internal)


@pytest.mark.parametrize(
    "spelling",
    [
        "http://2130706433:{port}/secret",
        "http://0x7f.1:{port}/secret",
        "http://0177.0.0.1:{port}/secret",
        "http://[::ffff:127.0.0.1]:{port}/secret",
        "http://[::1]:{port}/secret",
        "http://0.0.0.0:{port}/secret",
        METADATA,
    ],
)
def test_other_spellings_and_the_metadata_address_are_refused(server, internal, spelling):
    refused(server, spelling.format(port=internal.port))
    no_secret(server, internal)


@pytest.mark.parametrize(
    "path", ["/to-internal.safetensors", "/chain.safetensors", "/to-metadata.safetensors"]
)
def test_redirects_from_an_allowed_host_to_internal_ones_are_refused(
    server, allowed, internal, path
):
    before = allowed.count(path)
    refused(server, allowed.url(path))
    assert allowed.count(path) == before + 1  # the allowed hop was fetched, the next one not
    no_secret(server, internal)


def test_a_redirect_to_file_is_refused_at_once(server, allowed):
    before = allowed.count("/to-file.safetensors")
    refused(server, allowed.url("/to-file.safetensors"))
    assert allowed.count("/to-file.safetensors") == before + 1  # no retries


def test_the_allowed_host_works_and_its_bytes_are_never_quoted(server, allowed, tmp_path):
    _, body = predict_ok(server, tmp_path, "ok.mp4", lora_url=allowed.url("/style.safetensors"),
                         **BASE)  # fmt: skip
    assert "lora: downloaded" in body["logs"]
    error = predict_failed(server, lora_url=allowed.url("/notes.safetensors"), **BASE)
    assert "is not a safetensors file" in error and "INTERNAL-SECRET" not in error
    assert "INTERNAL-SECRET" not in server.logs()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:99999/x.safetensors", "the port is not a number from 1 to 65535"),
        ("http://[::1/x.safetensors", "invalid IPv6 address in brackets"),
        ("http://127.0.0.1/" + "a" * 1_000_000, ""),  # refused for its length, message clipped
    ],
)
def test_malformed_urls_get_short_messages_naming_lora_url(server, url, message):
    status, body = server.predict({**BASE, "lora_url": url, "num_inference_steps": 2})
    assert status == 200 and body["status"] == "failed", str(body)[:2000]
    error = body["error"]
    assert "lora_url" in error and message in error and len(error) < 800, error[:2000]
    assert len(json.dumps({k: v for k, v in body.items() if k != "input"})) < 4000
    assert server.wait_idle(timeout=60)["status"] == "READY"


def test_with_the_opt_in_off_even_the_allow_listed_host_is_refused(
    weights_server, allowed, tmp_path
):
    env = {**runner_env(tmp_path, weights_server.serve("t2v-5b")), ALLOW_PRIVATE_ENV: "0"}
    with CogletServer("cog.yaml", env=env) as off:
        assert off.wait_ready(timeout=300)["status"] == "READY", off.logs()
        before = allowed.count("/style.safetensors")
        refused(off, allowed.url("/style.safetensors"))
        assert allowed.count("/style.safetensors") == before
