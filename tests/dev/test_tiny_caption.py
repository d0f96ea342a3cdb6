"""The tiny CogVLM2-Caption folder built offline (cogvx.dev.caption, tools/make_tiny_weights.py
--model caption): the golden fixture's layout, loadable by our captioner and service (also from a
packed tarball over loopback HTTP), greedy captions that say something, byte-identical by seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import PreTrainedTokenizerFast

from cogvx.cogvlm2 import CogVLM2Captioner
from cogvx.dev.caption import SPECIAL_IDS, save_tiny_caption_weights
from cogvx.video import write_video
from tests.support.e2e import CAPTION_FILES
from tests.support.shared_fixtures import fixture_dir
from tests.support.weights_server import WeightsServer
from tools.pack_weights import main as pack_weights

REPO = Path(__file__).resolve().parents[2]
FILES = {"model.safetensors", *CAPTION_FILES}
PROMPT = "Question: Please describe this video in detail. Answer:"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_caption_weights(tmp_path_factory.mktemp("tiny-caption") / "cogvlm2")


@pytest.fixture(scope="module")
def golden() -> Path:
    return fixture_dir("cogvlm2")


@pytest.fixture(scope="module")
def captioner(folder) -> CogVLM2Captioner:
    return CogVLM2Captioner.from_folder(folder)


def _tensors(path: Path) -> dict[str, tuple[list[int], str]]:
    with safe_open(str(path), "pt") as f:
        return {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}


def _keys(obj: object, prefix: str = "") -> set[str]:
    if not isinstance(obj, dict):
        return set()
    out = set()
    for k, v in obj.items():
        out |= {prefix + k, *_keys(v, f"{prefix}{k}.")}
    return out


def _own_vocab(tok: PreTrainedTokenizerFast) -> int:
    return 1 + max(i for i in tok.get_vocab().values() if i < 128000)


def _clip(seed: int = 0, frames: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, frames, 60, 80), generator=g, dtype=torch.uint8)


def _video_file(path: Path) -> Path:
    frames = np.random.default_rng(0).integers(0, 255, (16, 32, 48, 3), dtype=np.uint8)
    return write_video(frames, path, fps=8)


# ---- the layout of the golden fixture ----


def test_same_files_as_the_fixture(folder, golden):
    assert {p.name for p in folder.iterdir()} == FILES
    assert FILES <= {p.name for p in golden.iterdir()}  # the fixture adds only golden data


def test_config_has_the_fixtures_keys_and_sizes(folder, golden):
    ours = json.loads((folder / "config.json").read_text())
    theirs = json.loads((golden / "config.json").read_text())
    assert _keys(ours) == _keys(theirs)
    assert ours == theirs  # the same tiny sizes, ids, template_version and 2048 positions
    for name in ("generation_config.json", "special_tokens_map.json", "tokenizer_config.json"):
        assert json.loads((folder / name).read_text()) == json.loads((golden / name).read_text())
    assert json.loads((folder / "tokenizer_config.json").read_text())[
        "clean_up_tokenization_spaces"
    ]


def test_tensors_have_the_official_names_shapes_and_dtype(folder, golden):
    ours, theirs = _tensors(folder / "model.safetensors"), _tensors(golden / "model.safetensors")
    assert ours == theirs  # same keys (fused QKV, language_mlp, EVA tower, boi/eoi), all BF16
    assert not [k for k in ours if "vision_expert" in k]  # the caption checkpoint has none
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        inv_freq = f.get_tensor("model.layers.0.self_attn.rotary_emb.inv_freq")
        pad_row = f.get_tensor("model.embed_tokens.weight")[128002]
    formula = 1.0 / 500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    assert torch.equal(inv_freq, formula.to(torch.bfloat16))  # stored in BF16 like the original
    assert not pad_row.any()


def test_tokenizer_is_llama3_style_with_the_specials_at_128000(folder, golden):
    ours = json.loads((folder / "tokenizer.json").read_text())
    theirs = json.loads((golden / "tokenizer.json").read_text())
    for key in ("added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert ours[key] == theirs[key], key
    model = {k: v for k, v in ours["model"].items() if k not in ("vocab", "merges")}
    assert model == {k: v for k, v in theirs["model"].items() if k not in ("vocab", "merges")}
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    assert (tok.bos_token_id, tok.eos_token_id) == (128000, 128001)
    assert tok.convert_tokens_to_ids("<|reserved_special_token_0|>") == 128002
    assert {i for t, i in ours["model"]["vocab"].items() if i >= 128000} == {*SPECIAL_IDS.values()}
    byte_ids = [{t: i for t, i in v["model"]["vocab"].items() if i < 256} for v in (ours, theirs)]
    assert byte_ids[0] == byte_ids[1]  # ids 0..255: the 256 bytes in Llama 3's (GPT-2's) order
    n = _own_vocab(tok)
    assert 300 <= n <= 1000 and sorted(i for i in tok.get_vocab().values() if i < n) == [
        *range(n)
    ]  # a few hundred real ids, no gaps
    ids = tok(PROMPT).input_ids
    assert ids[0] == 128000 and all(i < n for i in ids[1:])
    assert len(ids) < 16  # the prompt's words were learnt as merges
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT
    assert tok.decode(tok("héllo ✓ 12 345").input_ids[1:]) == "héllo ✓ 12 345"  # bytes


# ---- loading and captioning ----


@pytest.mark.parametrize("template", ["chat", "base"])
def test_greedy_caption_is_real_text(captioner, template):
    ids = captioner.generate_ids(_clip(), template=template, max_new_tokens=8)
    assert len(ids) == 8 and all(i < _own_vocab(captioner.tokenizer) for i in ids)
    text = captioner.caption(_clip(), template=template, max_new_tokens=8)
    assert text and text == captioner.decode(ids)


def test_caption_service_loads_the_folder(folder, tmp_path):
    from cogvx.services.caption import CaptionService

    service = CaptionService(str(folder), log=lambda _: None)
    text = service.run(
        video=_video_file(tmp_path / "clip.mp4"), prompt="Describe.", strategy="chat",
        max_new_tokens=6, temperature=0.0, top_p=1.0, seed=None,
    )  # fmt: skip
    assert isinstance(text, str) and text


def test_packed_tarball_served_over_http_loads_in_the_service(folder, tmp_path, monkeypatch):
    from cogvx.services.caption import CaptionService

    tar = tmp_path / "caption.tar"
    assert pack_weights([str(folder), str(tar)]) == 0
    monkeypatch.setenv("COGVX_WEIGHTS_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    with WeightsServer({"/caption.tar": tar}) as server:
        service = CaptionService(server.url("/caption.tar"), log=lines.append)
    assert any("sha256 verified" in line for line in lines), lines
    installed = service.captioner.model.config
    assert installed.max_position_embeddings == 2048
    text = service.run(
        video=_video_file(tmp_path / "clip.mp4"), prompt="Describe.", strategy="base",
        max_new_tokens=4, temperature=0.0, top_p=1.0, seed=None,
    )  # fmt: skip
    assert text


# ---- determinism and the CLI ----


def test_cli_writes_the_same_bytes_and_other_seeds_other_weights(folder, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_tiny_weights.py"), "--model", "caption",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote tiny caption to {out}" in done.stdout
    for name in FILES:  # another process, the same seed: byte-identical
        assert (out / name).read_bytes() == (folder / name).read_bytes(), name
    other = save_tiny_caption_weights(tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (folder / "model.safetensors").read_bytes()
    for name in FILES - {"model.safetensors"}:  # the tokenizer and configs do not depend on it
        assert (other / name).read_bytes() == (folder / name).read_bytes(), name
    assert _tensors(other / "model.safetensors") == _tensors(folder / "model.safetensors")
