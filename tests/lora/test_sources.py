"""Every form of `lora_url` users paste resolves to the right file or is refused naming the
accepted forms; a bare Hugging Face repo finds its one .safetensors; Kohya files are refused;
the load log says how the strength was set."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import save_file

from cogvx.dev.tiny import build_tiny_pipeline
from cogvx.errors import LoraError
from cogvx.lora import LoraCache, LoraSlot, normalize_lora
from cogvx.lora.files import alpha_note
from cogvx.lora.sources import ACCEPTED_FORMS, Source, parse_source, pick_repo_file

HF = "https://huggingface.co"
DEFAULT = "pytorch_lora_weights.safetensors"


def _file(path: str) -> Source:
    return Source(f"{HF}/o/r/resolve/{path}")


def _repo(rev: str = "main") -> Source:
    return Source(f"{HF}/o/r/resolve/{rev}/{DEFAULT}", "o/r", rev)


FORMS = [
    ("o/r", _repo()),
    ("o/r/sub/x.safetensors", _file("main/sub/x.safetensors")),
    ("huggingface.co/o/r", _repo()),
    ("https://huggingface.co/o/r", _repo()),
    ("https://huggingface.co/o/r/", _repo()),
    ("https://www.huggingface.co/o/r/tree/dev", _repo("dev")),
    ("https://huggingface.co/o/r/blob/main/x.safetensors", _file("main/x.safetensors")),
    ("https://huggingface.co/o/r/resolve/main/x.safetensors", _file("main/x.safetensors")),
    (
        "https://huggingface.co/o/r/resolve/v2/a/b.safetensors?download=1",
        _file("v2/a/b.safetensors"),
    ),
    ("hf.co/o/r/blob/main/x.safetensors", _file("main/x.safetensors")),
    ("replicate.com/o/m", Source("https://replicate.com/o/m/_weights")),
    (
        "https://replicate.com/o/m/versions/abc",
        Source("https://replicate.com/o/m/versions/abc/_weights"),
    ),
    (
        "https://civitai.com/models/1/name?modelVersionId=4",
        Source("https://civitai.com/api/download/models/4"),
    ),
    (
        "https://civitai.com/api/download/models/4",
        Source("https://civitai.com/api/download/models/4"),
    ),
    ("https://example.com/lora.safetensors", Source("https://example.com/lora.safetensors")),
    ("  o/r  ", _repo()),
]


@pytest.mark.parametrize(("form", "want"), FORMS, ids=[f for f, _ in FORMS])
def test_every_pasted_form_resolves(form, want, monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    got = parse_source(form)
    assert got == want
    assert "huggingface.co/huggingface.co" not in got.url and "/replicate.com/o" not in got.url[8:]


REFUSED = [
    ("civitai.com/models/123", "is a civitai.com model page, not a file"),
    ("https://civitai.com/models/123/name", "is a civitai.com model page, not a file"),
    ("https://huggingface.co/spaces/o/r/app", "is a Hugging Face page that is not a repo"),
    ("ftp://example.com/x.safetensors", "is not a LoRA source"),
    ("just words", "is not a LoRA source"),
    ("o/r/../../etc/passwd", "'..' is not allowed"),
]  # fmt: skip


@pytest.mark.parametrize(("form", "why"), REFUSED, ids=[f for f, _ in REFUSED])
def test_other_forms_are_refused_naming_the_accepted_ones(form, why):
    with pytest.raises(LoraError) as e:
        parse_source(form)
    assert why in str(e.value)
    if "'..'" not in why:
        assert ACCEPTED_FORMS in str(e.value)


def test_hf_endpoint_is_honoured(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local:8080/")
    assert (
        parse_source("o/r/x.safetensors").url
        == "http://mirror.local:8080/o/r/resolve/main/x.safetensors"
    )


def test_repo_listings():
    assert pick_repo_file(["README.md", DEFAULT, "other.safetensors"], "o/r") == DEFAULT
    assert (
        pick_repo_file(["README.md", "sub/my_lora.safetensors"], "o/r") == "sub/my_lora.safetensors"
    )
    with pytest.raises(LoraError, match="holds no .safetensors file"):
        pick_repo_file(["README.md", "lora.bin"], "o/r")
    with pytest.raises(LoraError, match="holds 2 .safetensors files.*name one as owner/repo/file"):
        pick_repo_file(["a.safetensors", "b.safetensors"], "o/r")


def _lora(alpha: float | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = "transformer.transformer_blocks.0.attn1.to_q"
    sd = {
        f"{q}.lora_A.weight": torch.randn(4, 32, generator=g),
        f"{q}.lora_B.weight": torch.randn(32, 4, generator=g),
    }
    if alpha is not None:
        sd[f"{q}.alpha"] = torch.tensor(alpha)
    return sd


class _Hub:
    """A loopback stand-in for the Hub: a file listing and the files."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hub.requests.append(self.path)
                body = hub.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()


def test_a_repo_with_one_other_safetensors_is_found(tmp_path, monkeypatch):
    save_file(_lora(), str(tmp_path / "l.safetensors"))
    listing = {"siblings": [{"rfilename": "README.md"}, {"rfilename": "my_lora.safetensors"}]}
    hub = _Hub({
        "/api/models/o/r/revision/main": json.dumps(listing).encode(),
        "/o/r/resolve/main/my_lora.safetensors": (tmp_path / "l.safetensors").read_bytes(),
    })  # fmt: skip
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        logs: list[str] = []
        slot = LoraSlot(
            build_tiny_pipeline("t2v-5b"),
            "t2v-5b",
            LoraCache(tmp_path / "c", log=logs.append),
            log=logs.append,
        )
        slot.apply("https://huggingface.co/o/r", 1.0)
        assert slot.url == f"{hub.url}/o/r/resolve/main/my_lora.safetensors"
        assert "lora: o/r holds my_lora.safetensors" in logs
        assert any(
            "no alpha stored: alpha = rank (scale 1), as diffusers loads it" in m for m in logs
        )
        slot.apply("o/r", 0.5)  # same repo again: listing memoized, file not reloaded
        assert hub.requests.count("/api/models/o/r/revision/main") == 1 and slot.loads == 1
    finally:
        hub.close()


def test_alpha_notes(tmp_path):
    save_file(_lora(), str(tmp_path / "a.safetensors"))
    save_file(_lora(alpha=2.0), str(tmp_path / "b.safetensors"))
    assert (
        alpha_note(tmp_path / "a.safetensors", "a")
        == "no alpha stored: alpha = rank (scale 1), as diffusers loads it"
    )
    assert alpha_note(tmp_path / "b.safetensors", "b") == "alpha/rank from the file"


def test_kohya_files_are_refused_naming_the_format():
    sd = {"lora_unet_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 32)}
    with pytest.raises(
        LoraError, match="is a Kohya-format LoRA .*diffusers has no Kohya converter"
    ):
        normalize_lora(sd, {}, "k.safetensors")
