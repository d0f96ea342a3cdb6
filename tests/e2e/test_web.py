"""The web page (tools/web.py) in a real browser: Debian's headless Chromium, driven by Playwright,
against tiny models served by real coglet servers. Screenshots go to the test's tmp folder."""

from __future__ import annotations

import re
import urllib.request

import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH
from cogvx.webui.client import CogClient, ServerError, save_data_uri
from cogvx.webui.form import fields_from_openapi, to_request
from tests.support.browser import WebPage, chromium_page, wait_playable
from tests.support.coglet_harness import CogletServer
from tests.support.e2e import gradient, runner_env
from tests.support.media import assert_same_file, ffprobe

TEXT = ":is(textarea, input)"


def _fetch(url: str, dest):
    with urllib.request.urlopen(url, timeout=30) as resp:
        dest.write_bytes(resp.read())
    return dest


def _set_number(page, name: str, value: int) -> None:
    box = page.locator(f"#input-{name} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _status(page, pattern: str, timeout_s: float = 180.0) -> str:
    """Wait until the status line matches `pattern`; return it."""
    try:
        page.wait_for_function(
            "([sel, pat]) => new RegExp(pat).test(document.querySelector(sel).innerText)",
            arg=["#status", pattern],
            timeout=timeout_s * 1000,
        )
    except PlaywrightTimeout:
        status = page.locator("#status").inner_text()
        raise AssertionError(f"status {status!r} after {timeout_s:.0f} s: no /{pattern}/") from None
    return page.locator("#status").inner_text()


@pytest.fixture(scope="module")
def t2v_page(weights_server, tmp_path_factory):
    """The page in its own-model mode: web.py starts cog.yaml (tiny 5b, tiny prompt LLM)."""
    from cogvx.dev.llm import save_tiny_llm

    tmp = tmp_path_factory.mktemp("web-t2v")
    url = weights_server.serve("t2v-5b")
    env = {k: v for k, v in runner_env(tmp, url).items() if k != "COG_WEIGHTS"}
    env["COGVX_PROMPT_WEIGHTS"] = str(save_tiny_llm(tmp / "llm"))
    page = WebPage(["--config", "cog.yaml", "--weights", url], env).wait_up()
    yield page
    model_server = re.search(r"model server on (http://\S+)", page.logs()).group(1)
    assert page.stop() == 0, page.logs()
    with pytest.raises(ServerError):  # the page stopped the model server it started
        CogClient(model_server).health()


def test_typed_prompt_gives_a_playable_video_and_the_same_file_as_the_api(t2v_page, tmp_path):
    with chromium_page() as page:
        page.goto(t2v_page.url, wait_until="domcontentloaded")
        page.locator(f"#input-prompt {TEXT}").fill("a red fox runs through fresh snow")
        _set_number(page, "num_inference_steps", 2)
        page.locator(f"#input-seed {TEXT}").fill("5")
        page.locator("#generate").click()
        duration = wait_playable(page, "#output-video video")
        assert _status(page, r"Done in").startswith("Done")
        logs = page.locator(f"#logs {TEXT}").input_value()
        shot = page.screenshot(path=str(tmp_path / "web-t2v.png"), full_page=True)
        src = page.evaluate("document.querySelector('#output-video video').src")
        server = re.search(r"Server: (http://\S+)", page.locator("body").inner_text()).group(1)

        page.locator("#input-extend_prompt input[type=checkbox]").check()
        page.locator("#generate").click()
        page.wait_for_function(
            "sel => document.querySelector(sel).value.includes('extended prompt:')",
            arg=f"#logs {TEXT}",
            timeout=180_000,
        )
        extended_logs = page.locator(f"#logs {TEXT}").input_value()
        wait_playable(page, "#output-video video")
    extended = re.search(r"extended prompt: (.+)", extended_logs)
    assert extended and extended.group(1).strip() not in ("", "a red fox runs through fresh snow")
    assert duration == pytest.approx(49 / 8, abs=0.2)
    assert "seed: 5" in logs and "2 steps" in logs, logs
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(tmp_path / "web-t2v.png").width == 1280
    # the file the browser played is what the API gives for the same inputs, byte for byte
    played = _fetch(src, tmp_path / "played.mp4")
    client = CogClient(server)
    fields = fields_from_openapi(client.openapi())
    values = {f.name: f.default for f in fields}
    values.update(prompt="a red fox runs through fresh snow", num_inference_steps=2, seed=5)
    result = client.predict(to_request(fields, values))
    assert result.ok, result.error
    assert_same_file(played, save_data_uri(result.output, tmp_path / "direct"))
    info = ffprobe(played)
    assert (info["width"], info["height"], info["frames"]) == (TINY_WIDTH, TINY_HEIGHT, 49)


@pytest.fixture(scope="module")
def i2v_server(weights_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web-i2v")
    url = weights_server.serve("i2v-5b")
    with CogletServer("cog.i2v.yaml", env=runner_env(tmp, url)) as server:
        assert server.wait_ready(timeout=300)["status"] == "READY", server.logs()
        yield server


def test_page_on_a_running_server_animates_an_uploaded_image_and_shows_errors(i2v_server, tmp_path):
    image = tmp_path / "first-frame.png"
    gradient(TINY_WIDTH * 2, TINY_HEIGHT * 2).save(image)
    web = WebPage(["--server", i2v_server.url]).wait_up(timeout=120)
    try:
        with chromium_page() as page:
            page.goto(web.url, wait_until="domcontentloaded")
            page.locator(f"#input-prompt {TEXT}").fill("a cat turns its head")
            _set_number(page, "num_inference_steps", 2)
            # opened well before it is typed in: a box filled while the accordion first renders
            # can lose its text (the request then went out without it, once in about five runs)
            page.get_by_text("Advanced", exact=True).click()
            lora = page.locator(f"#input-lora_url {TEXT}")
            lora.wait_for(state="visible", timeout=30_000)
            page.locator("#generate").click()  # no image yet: the page says what is missing
            assert "image: required" in _status(page, r"Not sent")

            page.locator("#input-image input[type=file]").set_input_files(str(image))
            page.locator("#input-image img").wait_for(timeout=30_000)
            internal = "http://127.0.0.1:1/style.safetensors"  # an internal address
            lora.fill(internal)
            expect(lora).to_have_value(internal)
            page.locator("#generate").click()
            failed = _status(page, r"failed")
            assert "lora_url" in failed, failed

            lora.fill("")
            page.locator("#generate").click()
            wait_playable(page, "#output-video video")
            logs = page.locator(f"#logs {TEXT}").input_value()
            page.screenshot(path=str(tmp_path / "web-i2v.png"), full_page=True)
            src = page.evaluate("document.querySelector('#output-video video').src")
        assert f"-> {TINY_WIDTH}x{TINY_HEIGHT} (crop)" in logs, logs
        # the seed box was left blank: the server drew one (gr.Number would have sent 0)
        assert re.search(r"^seed: \d+$", logs, re.M) and "seed: 0\n" not in logs, logs
        info = ffprobe(_fetch(src, tmp_path / "i2v.mp4"))
        assert (info["width"], info["height"], info["frames"]) == (TINY_WIDTH, TINY_HEIGHT, 49)
        assert i2v_server.wait_idle(timeout=60)["status"] == "READY"
    finally:
        assert web.stop() == 0, web.logs()
