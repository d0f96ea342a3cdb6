"""User LoRAs: sources, the on-disk LRU cache, alpha/r, shape checks, exact unload (tiny model)."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cogvx.dev.tiny import build_tiny_pipeline
from cogvx.lora import LoraCache, LoraError, LoraSlot, prepare_lora, resolve_source
from cogvx.lora.files import MAX_TAR_MEMBERS
from cogvx.net.urls import fetch_failed
from tests.support.loras import peft_lora, save_diffusers_lora
from tests.support.weights_server import WeightsServer


def _inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, 3, 16, 8, 12, generator=g),
        encoder_hidden_states=torch.randn(1, 226, 32, generator=g),
        timestep=torch.tensor([500]),
    )


def _out(transformer) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**_inputs(), return_dict=False)[0]


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """name -> bytes of LoRA files (and bad files) made for the tiny t2v-5b model."""
    root = tmp_path_factory.mktemp("loras")
    files: dict[str, bytes] = {}
    files["a.safetensors"] = save_diffusers_lora(root / "a.safetensors").read_bytes()
    files["b.safetensors"] = save_diffusers_lora(root / "b.safetensors", seed=2).read_bytes()
    files["c.safetensors"] = save_diffusers_lora(root / "c.safetensors", seed=3).read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("output/lora.safetensors")
        info.size = len(files["a.safetensors"])
        tf.addfile(info, io.BytesIO(files["a.safetensors"]))
    files["weights.tar"] = buf.getvalue()
    pt = io.BytesIO()
    torch.save({"x": torch.zeros(2)}, pt)
    files["model.pt"] = pt.getvalue()
    files["page.safetensors"] = b"<html><body>Sign in to download</body></html>" * 20
    return files


@pytest.fixture(scope="module")
def server(lora_files):
    with WeightsServer({f"/{k}": v for k, v in lora_files.items()}) as srv:
        yield srv


@pytest.fixture
def pipe():
    return build_tiny_pipeline("t2v-5b")


def test_sources_resolve_to_download_urls():
    hf = "https://huggingface.co"
    assert resolve_source("me/my-lora") == (
        f"{hf}/me/my-lora/resolve/main/pytorch_lora_weights.safetensors"
    )
    assert resolve_source(" me/my-lora/sub/w.safetensors ") == (
        f"{hf}/me/my-lora/resolve/main/sub/w.safetensors"
    )
    assert (
        resolve_source(f"{hf}/me/x/blob/v2/a.safetensors") == f"{hf}/me/x/resolve/v2/a.safetensors"
    )
    assert (
        resolve_source(f"{hf}/me/x") == f"{hf}/me/x/resolve/main/pytorch_lora_weights.safetensors"
    )
    assert (
        resolve_source("https://replicate.com/me/style")
        == "https://replicate.com/me/style/_weights"
    )
    assert resolve_source("https://replicate.com/me/style/versions/abc123") == (
        "https://replicate.com/me/style/versions/abc123/_weights"
    )
    plain = "https://example.com/x.safetensors?token=1"
    assert resolve_source(plain) == plain
    for bad in ("just-a-name", "ftp://host/x.safetensors", "data:application/x-tar;base64,AA"):
        with pytest.raises(LoraError, match="not a LoRA source"):
            resolve_source(bad)
    with pytest.raises(LoraError, match=r"'\.\.'"):
        resolve_source("me/repo/../../etc/passwd")


@pytest.mark.parametrize("form", ["metadata", "alpha_keys", "none", "sat"])
def test_alpha_over_r_is_applied_like_a_merged_model(tmp_path, pipe, form):
    r, alpha, scale = 4, 8.0, 0.5
    sd, _ = peft_lora(r=r, alpha=alpha)
    path = tmp_path / "l.safetensors"
    if form == "metadata":
        save_diffusers_lora(path, r=r, alpha=alpha)
    elif form == "alpha_keys":  # kohya-style: one `.alpha` scalar per module
        alphas = {
            k.replace(".lora_A.weight", ".alpha"): torch.tensor(alpha) for k in sd if "A" in k
        }
        save_file({**{f"transformer.{k}": v for k, v in sd.items()}, **alphas}, str(path))
    elif form == "none":  # no alpha anywhere: diffusers' convention alpha = r
        save_file(sd, str(path))
        alpha = float(r)
    else:  # raw SAT matrices: q/k/v share query_key_value, SAT's alpha is 1
        sat = {}
        for k, v in sd.items():
            n = k.split(".")[1]
            target = k.split(".attn1.")[1].rsplit(".lora_", 1)[0]
            ab = "A" if "lora_A" in k else "B"
            if target == "to_out.0":
                sat[f"transformer.layers.{n}.attention.dense.matrix_{ab}.0"] = v
            else:
                i = ["to_q", "to_k", "to_v"].index(target)
                sat[f"transformer.layers.{n}.attention.query_key_value.matrix_{ab}.{i}"] = v
        save_file(sat, str(path))
        alpha = 1.0
    base = copy.deepcopy(pipe.transformer)
    merged = copy.deepcopy(pipe.transformer)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for k, a in sd.items():
            if "lora_A" in k:
                b = sd[k.replace("lora_A", "lora_B")]
                modules[k.rsplit(".lora_A", 1)[0]].weight += scale * alpha / r * (b @ a)
    state = prepare_lora(path, pipe.transformer, "t2v-5b", "l")
    pipe.load_lora_weights(state, adapter_name="x")
    pipe.set_adapters(["x"], [scale])
    got, want = _out(pipe.transformer), _out(merged)
    assert not torch.allclose(want, _out(base), atol=1e-3)  # the LoRA does change the output
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_slot_loads_once_scale_zero_and_unload_are_bit_exact(tmp_path, pipe, server):
    base = _out(pipe.transformer)
    logs: list[str] = []
    slot = LoraSlot(pipe, "t2v-5b", LoraCache(tmp_path, min_free_bytes=0), log=logs.append)
    url_a, url_b = server.url("/a.safetensors"), server.url("/b.safetensors?sig=x")
    slot.apply(url_a, 1.0)
    with_a = _out(pipe.transformer)
    assert not torch.equal(with_a, base)
    slot.apply(url_a, 0.0)
    assert torch.equal(_out(pipe.transformer), base)
    slot.apply(url_a, 1.0)
    assert torch.equal(_out(pipe.transformer), with_a)
    assert slot.loads == 1 and server.count("/a.safetensors") == 1
    slot.apply(url_b, 1.0)  # a different LoRA replaces the first one
    with_b = _out(pipe.transformer)
    assert not torch.equal(with_b, with_a) and not torch.equal(with_b, base)
    assert list(pipe.transformer.peft_config) == ["user_lora"]
    slot.apply(None)
    assert torch.equal(_out(pipe.transformer), base)
    assert not any("lora_" in n for n, _ in pipe.transformer.named_parameters())
    slot.apply(url_a, 1.0)  # loaded again from the disk cache: no second download
    assert torch.equal(_out(pipe.transformer), with_a)
    assert server.count("/a.safetensors") == 1 and slot.cache.hits == 1
    assert "sig=x" not in "\n".join(logs)


def test_cache_evicts_least_recently_used_under_the_free_space_floor(tmp_path, server, lora_files):
    size = len(lora_files["a.safetensors"])
    disk = 10 * size  # a pretend disk: free space = disk - cached bytes

    def free() -> int:
        return disk - sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))

    floor = disk - int(2.5 * size)  # room for two LoRAs
    cache = LoraCache(tmp_path, min_free_bytes=floor, free_bytes=free, log=lambda _: None)
    a, b, c = (server.url(f"/{n}.safetensors") for n in "abc")
    pa = cache.fetch(a)
    pb = cache.fetch(b)
    assert cache.fetch(a) == pa and cache.hits == 1  # a is now the most recently used
    pc = cache.fetch(c)
    assert pa.is_file() and pc.is_file() and not pb.exists()  # b was the LRU entry
    assert cache.evictions == 1 and cache.downloads == 3
    assert cache.entries() == [pa, pc]


def test_a_tarball_holding_one_safetensors_is_accepted(tmp_path, pipe, server, lora_files):
    cache = LoraCache(tmp_path, min_free_bytes=0, log=lambda _: None)
    path = cache.fetch(server.url("/weights.tar"))
    assert path.read_bytes() == lora_files["a.safetensors"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/model.pt", "pickled PyTorch checkpoint"),
        ("/page.safetensors", "is not a safetensors file"),
        ("/missing.safetensors", "could not download it"),  # one message, no status oracle
    ],
)
def test_bad_downloads_say_what_is_wrong(tmp_path, server, name, message):
    cache = LoraCache(tmp_path, min_free_bytes=0, log=lambda _: None)
    with pytest.raises(LoraError, match=message) as err:
        cache.fetch(server.url(name) + "?token=secret")
    assert server.url(name) in str(err.value) and "secret" not in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_files_over_the_size_limit_are_refused_before_download(tmp_path, server, lora_files):
    cache = LoraCache(tmp_path, min_free_bytes=0, max_bytes=1000, log=lambda _: None)
    with pytest.raises(LoraError, match=r"LoRAs up to 0 MB are accepted"):
        cache.fetch(server.url("/a.safetensors"))


@pytest.mark.parametrize("value", ["bytes 0-x/5", "bytes 0-/5", "bytes 0-4", "bytes 0-9/5"])
def test_a_malformed_content_range_is_a_clean_error(tmp_path, lora_files, value):
    files = {"/a.safetensors": lora_files["a.safetensors"]}
    with WeightsServer(files, headers={"Content-Range": value}) as srv:
        url = srv.url("/a.safetensors")
        with pytest.raises(LoraError) as err:
            LoraCache(tmp_path, min_free_bytes=0, log=lambda _: None).fetch(url)
    assert str(err.value) == fetch_failed("lora_url", url)
    assert not list(tmp_path.iterdir())


def test_a_content_length_that_is_not_a_number_is_ignored(tmp_path, lora_files):
    body = lora_files["a.safetensors"]  # "²".isdigit() is True, int("²") raises
    with WeightsServer(
        {"/a.safetensors": body}, no_length=True, headers={"Content-Length": "²"}
    ) as srv:
        path = LoraCache(tmp_path, min_free_bytes=0, log=lambda _: None).fetch(
            srv.url("/a.safetensors")
        )
    assert path.read_bytes() == body


def _tar(members: list[tarfile.TarInfo], data: bytes, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A tarball of `members` (empty unless named *.safetensors, which hold `data`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info in members:
            body = data if info.name.endswith(".safetensors") else b""
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _sparse_tar(data: bytes) -> bytes:
    """A tarball whose LoRA member is a pax GNU sparse file (format 1.0), as `tar -S` writes."""
    info = tarfile.TarInfo("GNUSparseFile.0/lora.safetensors")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "lora.safetensors",
                        "GNU.sparse.realsize": str(len(data))}  # fmt: skip
    sparse_map = f"1\n0\n{len(data)}\n".encode().ljust(512, b"\0")
    info.size = len(sparse_map) + len(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(sparse_map + data))
    return buf.getvalue()


def test_tarballs_with_many_members_or_sparse_files_are_refused(tmp_path, lora_files):
    data = lora_files["a.safetensors"]
    many = [tarfile.TarInfo(f"d{i}/") for i in range(MAX_TAR_MEMBERS)]
    for info in many:
        info.type = tarfile.DIRTYPE
    files = {
        "/ok.tar": _tar([*many[:-1], tarfile.TarInfo("lora.safetensors")], data),  # 64 members
        "/many.tar": _tar([*many, tarfile.TarInfo("lora.safetensors")], data),  # 65 members
        "/sparse.tar": _sparse_tar(data),
    }
    cache = LoraCache(tmp_path, min_free_bytes=0, log=lambda _: None)
    with WeightsServer(files) as srv:
        assert cache.fetch(srv.url("/ok.tar")).read_bytes() == data
        with pytest.raises(LoraError, match=f"over {MAX_TAR_MEMBERS} members") as err:
            cache.fetch(srv.url("/many.tar"))
        assert str(err.value).startswith(f"lora_url {srv.url('/many.tar')}: ")
        with pytest.raises(LoraError, match="lora.safetensors in the tarball is a sparse file"):
            cache.fetch(srv.url("/sparse.tar"))
    assert [p.name for p in tmp_path.iterdir()] == [cache.path_for(srv.url("/ok.tar")).name]


def test_room_for_the_tar_member_is_made_before_it_is_extracted(tmp_path, lora_files):
    data = lora_files["a.safetensors"]
    tar = _tar([tarfile.TarInfo("lora.safetensors")], data)
    disk = len(tar) + len(data) // 2  # room for the tarball, not for its member beside it

    def free() -> int:
        return disk - sum(p.stat().st_size for p in tmp_path.iterdir() if p.is_file())

    cache = LoraCache(tmp_path, min_free_bytes=0, free_bytes=free, log=lambda _: None)
    with WeightsServer({"/w.tar": tar}) as srv:
        with pytest.raises(LoraError, match="not enough disk space for a"):
            cache.fetch(srv.url("/w.tar"))
    assert not list(tmp_path.iterdir())


def test_a_truncated_tarball_is_a_clean_error(tmp_path, lora_files):
    tar = _tar([tarfile.TarInfo("lora.safetensors")], lora_files["a.safetensors"])
    with WeightsServer({"/w.tar": tar[: len(tar) // 2]}) as srv:
        with pytest.raises(LoraError, match="the tarball is corrupt or truncated"):
            LoraCache(tmp_path, min_free_bytes=0, log=lambda _: None).fetch(srv.url("/w.tar"))


def _bad_lora(tmp_path: Path, sd: dict) -> Path:
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    return path


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (
            {"transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 64),
             "transformer_blocks.0.attn1.to_q.lora_B.weight": (32, 4)},
            r"'transformer_blocks.0.attn1.to_q.lora_A.weight' has shape \[4, 64\], "
            r"transformer_blocks.0.attn1.to_q needs \[r, 32\]",
        ),
        (
            {"transformer.transformer_blocks.7.attn1.to_k.lora_A.weight": (4, 32),
             "transformer.transformer_blocks.7.attn1.to_k.lora_B.weight": (32, 4)},
            r"targets 'transformer_blocks.7.attn1.to_k', which t2v-5b does not have "
            r"\(2 transformer blocks\)",
        ),
        (
            {"text_encoder.encoder.block.0.q.lora_A.weight": (4, 32)},
            "text-encoder LoRA",
        ),
        (
            {"transformer_blocks.0.attn1.to_q.weight": (32, 32)},
            "is not a LoRA matrix",
        ),
        (
            {"transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 32)},
            "has no matching lora_B",
        ),
    ],
)  # fmt: skip
def test_loras_that_do_not_fit_name_the_first_bad_key(tmp_path, pipe, tensors, message):
    path = _bad_lora(tmp_path, {k: torch.zeros(s) for k, s in tensors.items()})
    with pytest.raises(LoraError, match=message):
        prepare_lora(path, pipe.transformer, "t2v-5b", "bad.safetensors")


Q = "transformer_blocks.0.attn1.to_q"


def _pair(r: int = 4, fill: float = 0.1) -> dict[str, torch.Tensor]:
    return {f"{Q}.lora_A.weight": torch.full((r, 32), fill),
            f"{Q}.lora_B.weight": torch.full((32, r), fill)}  # fmt: skip


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        (_pair(), {"transformer.lora_alpha": "abc"}, r"lora_alpha 'abc' is not a number"),
        (_pair(), {"transformer.lora_alpha": float("inf")}, r"lora_alpha is inf; it must be"),
        (_pair(), [1, 2], r"lora_adapter_metadata is not a JSON object"),
        (_pair(), {"alpha_pattern": [1]}, r"alpha_pattern in .* not an object"),
        ({**_pair(), f"{Q}.alpha": torch.zeros(0)}, None, r"\.alpha' holds 0 values"),
        (_pair(r=0), None, r"lora_A.weight' has rank 0"),
        (_pair(fill=float("nan")), None, r"lora_A.weight' holds NaN or infinite values"),
        ({"x" * 100_000 + ".weight": torch.zeros(2)}, None, r"'x{100,120}… \(\d+ chars\) is not a"),
    ],
)  # fmt: skip
def test_malformed_lora_files_are_lora_errors(tmp_path, pipe, tensors, metadata, message):
    path = tmp_path / "bad.safetensors"
    meta = None if metadata is None else {"lora_adapter_metadata": json.dumps(metadata)}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(LoraError, match=message) as err:
        prepare_lora(path, pipe.transformer, "t2v-5b", "bad.safetensors")
    assert len(str(err.value)) < 1000  # a key of 100 kB is quoted clipped


def test_a_rank_zero_sat_lora_is_a_lora_error():
    """A user LoRA in SAT's layout with rank 0 is a LoraError naming the key (not 1/0)."""
    from cogvx.lora.files import normalize_lora

    key = "transformer.layers.0.attention.dense.matrix_{}.0"
    sd = {key.format("A"): torch.zeros(0, 32), key.format("B"): torch.zeros(32, 0)}
    with pytest.raises(LoraError, match=r"layer 0 dense has LoRA rank 0: .*\.matrix_A\.0 has"):
        normalize_lora(sd, label="sat.safetensors")


def test_a_failed_replacement_keeps_the_slot_consistent(tmp_path, pipe, server, lora_files):
    base = _out(pipe.transformer)
    slot = LoraSlot(pipe, "t2v-5b", LoraCache(tmp_path, min_free_bytes=0), log=lambda _: None)
    slot.apply(server.url("/a.safetensors"), 1.0)
    with_a = _out(pipe.transformer)
    with pytest.raises(LoraError):
        slot.apply(server.url("/page.safetensors"), 1.0)
    assert torch.equal(_out(pipe.transformer), with_a)  # the old adapter is still in place
    slot.apply("")
    assert torch.equal(_out(pipe.transformer), base)


def test_metadata_json_survives_round_trip(tmp_path):
    path = save_diffusers_lora(tmp_path / "m.safetensors", r=2, alpha=3.0)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.lora_alpha"] == 3.0 and meta["transformer.r"] == 2


def test_lora_written_by_the_sat_exporter_loads(tmp_path, pipe):
    from tools.export_sat_lora_weight import main as export_sat_lora

    sd, _ = peft_lora(r=4)
    sat = {}
    for k, v in sd.items():
        n, target = k.split(".")[1], k.split(".attn1.")[1].rsplit(".lora_", 1)[0]
        ab = "A" if "lora_A" in k else "B"
        if target == "to_out.0":
            sat[f"model.diffusion_model.transformer.layers.{n}.attention.dense.matrix_{ab}.0"] = v
        else:
            i = ["to_q", "to_k", "to_v"].index(target)
            key = f"model.diffusion_model.transformer.layers.{n}.attention.query_key_value"
            sat[f"{key}.matrix_{ab}.{i}"] = v
    torch.save({"module": sat}, tmp_path / "mp_rank_00_model_states.pt")
    out = tmp_path / "exported"
    assert export_sat_lora(["--sat-pt", str(tmp_path / "mp_rank_00_model_states.pt"),
                            "--output", str(out)]) == 0  # fmt: skip
    save_file({k.removeprefix("model.diffusion_model."): v for k, v in sat.items()},
              str(tmp_path / "raw.safetensors"))  # fmt: skip
    exported = prepare_lora(
        out / "pytorch_lora_weights.safetensors", pipe.transformer, "t2v-5b", "x"
    )
    raw = prepare_lora(tmp_path / "raw.safetensors", pipe.transformer, "t2v-5b", "raw")
    assert exported.keys() == raw.keys()
    for k in raw:
        torch.testing.assert_close(exported[k], raw[k])
    base = _out(pipe.transformer)
    pipe.load_lora_weights(exported, adapter_name="sat")
    assert not torch.equal(_out(pipe.transformer), base)
