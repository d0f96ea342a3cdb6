"""Fixtures for end-to-end tests: tiny weights built by the tools, packed, served over loopback.

Every test collected under tests/e2e/ carries the `e2e` marker: `pytest -m "not e2e"` runs the
unit tests only, `pytest -m e2e` these."""

from __future__ import annotations

from pathlib import Path

import pytest

from cogvx.weights.pack import pack_folder
from tests.support.e2e import tiny_caption_folder
from tests.support.weights_server import WeightsServer
from tools.make_tiny_weights import main as make_tiny_weights

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark every test of this folder `e2e` (the hook sees the whole session's items)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_tarballs(tmp_path_factory) -> dict[str, Path]:
    """model name -> packed tarball of its tiny weights (built once per session, lazily)."""
    root = tmp_path_factory.mktemp("tiny")
    cache: dict[str, Path] = {}

    class Lazy(dict):
        def __missing__(self, model: str) -> Path:
            folder = root / model
            assert make_tiny_weights(["--model", model, "--out", str(folder)]) == 0
            cache[model] = pack_folder(folder, root / f"{model}.tar", log=lambda _: None)
            self[model] = cache[model]
            return cache[model]

    return Lazy()


@pytest.fixture(scope="session")
def weights_server(tiny_tarballs):
    """A Range-capable loopback server; `serve(model)` returns the URL of its tiny tarball."""
    files: dict[str, Path | bytes] = {"/not-a-tar.tar": b"<html>Not a tarball</html>" * 40}
    with WeightsServer(files, statuses={"/forbidden.tar": 403}) as server:

        def serve(model: str) -> str:
            files[f"/{model}.tar"] = tiny_tarballs[model]
            return server.url(f"/{model}.tar")

        server.serve = serve  # type: ignore[attr-defined]
        yield server


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny CogVLM2 whose LM head can only say words of its own vocabulary (captioning)."""
    return tiny_caption_folder(tmp_path_factory.mktemp("caption-tiny") / "cogvlm2")
