"""SAT -> diffusers conversion: golden SAT outputs, synthetic layouts, VAE round trip, errors."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cogvx.convert.sat import atomic_path, load_state_dict, write_model_folder
from cogvx.convert.sat_keys import Planned
from cogvx.convert.sat_layout import FAMILIES, detect_transformer
from cogvx.convert.sat_pipeline import convert_pipeline
from cogvx.convert.sat_vae import detect_vae, plan_vae
from cogvx.dev.sat_synth import sat_transformer_state, sat_vae_state, tiny_transformer, tiny_vae
from cogvx.dev.tiny import save_tiny_t5
from cogvx.lora.sat_format import SAT_PREFIX, SatConversionError
from tests.support.shared_fixtures import fixture_dir
from tools.convert_weight_sat2hf import main as convert_main

FIXTURES = fixture_dir("sat")
QUIET = {"log": lambda _msg: None}
HIDDEN = 32  # tiny_transformer: 2 heads x 16


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    """Tiny T5 encoder (d_model 32 = the fixtures' text dim) + tokenizer, offline."""
    out = tmp_path_factory.mktemp("t5")
    save_tiny_t5(out)
    return out


@pytest.fixture(scope="module")
def sat_vae(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny VAE (4 latent channels, like the fixtures) saved in SAT's 3d-vae.pt layout."""
    vae = tiny_vae(latent_channels=4, seed=1)
    path = tmp_path_factory.mktemp("vae") / "3d-vae.pt"
    torch.save({"state_dict": sat_vae_state(vae)}, path)
    return path, vae.state_dict()


def _save_sat(tmp_path: Path, sd: dict[str, torch.Tensor], name: str = "ckpt.pt") -> Path:
    path = tmp_path / name
    torch.save({"module": sd}, path)
    return path


def _fixture_output(pipe, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run the converted transformer on the fixture inputs the way the diffusers pipeline does."""
    latents = ref["latents"]
    model_input = latents
    if "concat_images" in ref:  # I2V: image latents concatenated on the channel axis
        model_input = torch.cat([latents, ref["concat_images"]], dim=2)
    _, frames, _, height, width = latents.shape
    scale = pipe.vae_scale_factor_spatial
    rope = pipe._prepare_rotary_positional_embeddings(height * scale, width * scale, frames, "cpu")
    cfg = pipe.transformer.config
    ofs = None if cfg.ofs_embed_dim is None else latents.new_full((1,), fill_value=2.0)
    with torch.no_grad():
        return pipe.transformer(
            hidden_states=model_input,
            encoder_hidden_states=ref["context"],
            timestep=ref["timesteps"],
            ofs=ofs,
            image_rotary_emb=rope,
            return_dict=False,
        )[0]


@pytest.mark.parametrize(
    ("variant", "family", "pipeline"),
    [
        ("5b", "t2v-5b", "CogVideoXPipeline"),
        ("1.5-i2v", "i2v-1.5", "CogVideoXImageToVideoPipeline"),
    ],
)
def test_fixture_reproduces_sat_output(
    tmp_path, t5_dir, sat_vae, capsys, variant, family, pipeline
):
    from diffusers import DiffusionPipeline

    out = tmp_path / "out"
    rc = convert_main(
        [
            "--transformer", str(FIXTURES / variant / "mp_rank_00_model_states.pt"),
            "--vae", str(sat_vae[0]),
            "--vae-norm-groups", "4",
            "--text-encoder-path", str(t5_dir),
            "--output", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    assert f"detected {family}" in printed
    assert "2 layers, hidden 64, 4 heads x 16" in printed
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == pipeline
    assert type(pipe.scheduler).__name__ == "CogVideoXDPMScheduler"
    assert pipe.scheduler.config.snr_shift_scale == 1.0
    assert pipe.vae.config.invert_scale_latents == (family == "i2v-1.5")
    ref = load_file(str(FIXTURES / variant / "reference.safetensors"))
    if "ofs" in ref:
        assert torch.all(ref["ofs"] == 2.0)  # what the diffusers I2V pipeline passes
    got = _fixture_output(pipe, ref)
    diff = (got - ref["output"]).abs().max().item()
    assert diff < 1e-4, f"max abs diff {diff:.2e} vs SAT"
    assert ref["output"].abs().max() > 1.0  # the comparison is not trivially small


def test_converted_pipeline_generates(tmp_path, t5_dir, sat_vae):
    """The assembled folder loads as a pipeline and runs end to end (prompt -> frames)."""
    from diffusers import DiffusionPipeline

    out = convert_pipeline(
        tmp_path / "out",
        transformer=FIXTURES / "5b" / "mp_rank_00_model_states.pt",
        vae=sat_vae[0],
        text_encoder_path=t5_dir,
        vae_norm_groups=4,
        **QUIET,
    )
    pipe = DiffusionPipeline.from_pretrained(out)
    frames = pipe(
        prompt="a cat",
        height=64,
        width=64,
        num_frames=13,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).frames
    assert frames.shape[0] == 1 and frames.shape[2:] == (3, 64, 64) and frames.shape[1] >= 13
    assert torch.isfinite(frames).all()
    assert json.loads((out / "cogvx.json").read_text()) == {"height": 64, "width": 64}


def test_dtype_and_shards(tmp_path):
    src = FIXTURES / "5b" / "mp_rank_00_model_states.pt"
    from diffusers import CogVideoXTransformer3DModel

    full = convert_pipeline(tmp_path / "fp32", transformer=src, **QUIET)
    sharded = convert_pipeline(tmp_path / "sh", transformer=src, max_shard_size="100KB", **QUIET)
    index = json.loads(
        (sharded / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text()
    )
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 4 and shards[0].endswith(f"00001-of-{len(shards):05d}.safetensors")
    a = CogVideoXTransformer3DModel.from_pretrained(full / "transformer").state_dict()
    b = CogVideoXTransformer3DModel.from_pretrained(sharded / "transformer").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    bf16 = convert_pipeline(tmp_path / "bf16", transformer=src, dtype="bf16", **QUIET)
    tensors = load_file(str(bf16 / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert torch.equal(tensors["proj_out.weight"], a["proj_out.weight"].bfloat16())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_synthetic_layouts_round_trip(tmp_path, name):
    """Every layout: diffusers -> SAT keys -> converter gives back the same weights and sizes."""
    from diffusers import CogVideoXTransformer3DModel

    family = FAMILIES[name]
    model = tiny_transformer(family, num_layers=3, sample=(8, 12, 17), text_len=7, seed=3)
    sd = sat_transformer_state(model, family, store_freqs=name != "i2v-5b")
    path = _save_sat(tmp_path, sd)
    kwargs = {}
    if name == "i2v-5b":  # newer SAT stores no RoPE table: the learned table's size must be given
        with pytest.raises(SatConversionError, match="--sample-size"):
            convert_pipeline(tmp_path / "x", transformer=path, **QUIET)
        kwargs = dict(sample_size=(8, 12), sample_frames=17, max_text_seq_length=7)
    lines: list[str] = []
    out = convert_pipeline(tmp_path / "out", transformer=path, log=lines.append, **kwargs)
    assert any(f"detected {name}" in line for line in lines)
    converted = CogVideoXTransformer3DModel.from_pretrained(out / "transformer")
    a, b = model.state_dict(), converted.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    keep = ["num_layers", "num_attention_heads", "attention_head_dim", "in_channels"]
    keep += ["out_channels", "patch_size_t", "ofs_embed_dim", "use_learned_positional_embeddings"]
    keep += ["use_rotary_positional_embeddings", "time_embed_dim", "text_embed_dim"]
    if family.generation == "1.0":  # 1.0 RoPE/sincos/learned tables depend on the training size
        keep += ["sample_height", "sample_width", "sample_frames"]
    if name in ("t2v-2b", "i2v-5b"):
        keep += ["max_text_seq_length", "spatial_interpolation_scale"]
    assert {k: converted.config[k] for k in keep} == {k: model.config[k] for k in keep}
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == family.scheduler
    assert sched["snr_shift_scale"] == (3.0 if name == "t2v-2b" else 1.0)
    assert sched["timestep_spacing"] == "trailing" and sched["prediction_type"] == "v_prediction"
    assert sched["rescale_betas_zero_snr"] is True
    x = torch.randn(
        1, 4, model.config.in_channels, 8, 12, generator=torch.Generator().manual_seed(0)
    )
    text = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))
    kw = {"ofs": torch.tensor([2.0])} if family.i2v and family.generation == "1.5" else {}
    rope = None
    if family.positional != "sincos":
        from diffusers.models.embeddings import get_3d_rotary_pos_embed

        t = 2 if family.generation == "1.5" else 4
        rope = get_3d_rotary_pos_embed(16, ((0, 0), (4, 6)), (4, 6), t)
    with torch.no_grad():
        want = model(x, text, torch.tensor([500]), image_rotary_emb=rope, **kw, return_dict=False)[
            0
        ]
        got = converted(
            x, text, torch.tensor([500]), image_rotary_emb=rope, **kw, return_dict=False
        )[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # same weights; GEMM order may differ


def test_vae_round_trip_and_scaling(tmp_path, sat_vae):
    from diffusers import AutoencoderKLCogVideoX

    path, original = sat_vae
    for name, scale, invert in [
        ("t2v-2b", 1.15258426, False),
        ("t2v-5b", 0.7, False),
        ("i2v-1.5", 0.7, True),
    ]:
        out = convert_pipeline(tmp_path / name, vae=path, variant=name, vae_norm_groups=4, **QUIET)
        vae = AutoencoderKLCogVideoX.from_pretrained(out / "vae")
        assert vae.config.scaling_factor == scale and vae.config.invert_scale_latents == invert
        assert list(vae.config.block_out_channels) == [8, 8, 16, 16]
        assert vae.config.latent_channels == 4 and vae.config.layers_per_block == 1
        got = vae.state_dict()
        assert got.keys() == original.keys()
        assert all(torch.equal(got[k], original[k]) for k in got)
    with pytest.raises(ValueError, match="--variant"):
        convert_pipeline(tmp_path / "novariant", vae=path, **QUIET)


def test_full_sat_model_checkpoint(tmp_path, sat_vae):
    """A whole SAT model file: DiT + first_stage_model (VAE) + conditioner (T5, skipped)."""
    from diffusers import AutoencoderKLCogVideoX

    family = FAMILIES["t2v-5b"]
    sd = sat_transformer_state(tiny_transformer(family), family)
    vae_sd = torch.load(sat_vae[0], weights_only=True)["state_dict"]
    sd.update({f"first_stage_model.{k}": v for k, v in vae_sd.items()})
    sd["conditioner.embedders.0.transformer.shared.weight"] = torch.zeros(4, 32)
    lines: list[str] = []
    out = convert_pipeline(
        tmp_path / "out", transformer=_save_sat(tmp_path, sd), vae_norm_groups=4, log=lines.append
    )
    assert any("skipped 1 conditioner.* keys" in line for line in lines)
    vae = AutoencoderKLCogVideoX.from_pretrained(out / "vae").state_dict()
    assert vae.keys() == sat_vae[1].keys() and all(torch.equal(vae[k], sat_vae[1][k]) for k in vae)


def test_vae_strictness(tmp_path, sat_vae):
    sd = torch.load(sat_vae[0], weights_only=True)["state_dict"]
    extra = dict(sd, **{"decoder.up.0.block.0.attn.weight": torch.zeros(1)})
    torch.save({"state_dict": extra}, tmp_path / "extra.pt")
    with pytest.raises(
        SatConversionError, match=r"unexpected.*up_blocks\.3\.resnets\.0\.attn\.weight"
    ):
        convert_pipeline(
            tmp_path / "a", vae=tmp_path / "extra.pt", variant="5b", vae_norm_groups=4, **QUIET
        )
    missing = {k: v for k, v in sd.items() if k != "decoder.up.1.upsample.conv.weight"}
    torch.save({"state_dict": missing}, tmp_path / "missing.pt")
    with pytest.raises(
        SatConversionError, match=r"missing 1 .*up_blocks\.2\.upsamplers\.0\.conv\.weight"
    ):
        convert_pipeline(
            tmp_path / "b", vae=tmp_path / "missing.pt", variant="5b", vae_norm_groups=4, **QUIET
        )


def test_transformer_strictness(tmp_path):
    family = FAMILIES["t2v-5b"]
    sd = sat_transformer_state(tiny_transformer(family), family)
    extra = dict(sd, **{SAT_PREFIX + "mixins.new_thing.weight": torch.zeros(2)})
    with pytest.raises(
        SatConversionError, match=r"unexpected keys: \['model\.diffusion_model\.mixins\.new_thing"
    ):
        convert_pipeline(tmp_path / "a", transformer=_save_sat(tmp_path, extra, "e.pt"), **QUIET)
    missing = {k: v for k, v in sd.items() if "layers.1.mlp.dense_4h_to_h.bias" not in k}
    with pytest.raises(
        SatConversionError, match=r"missing 1 .*transformer_blocks\.1\.ff\.net\.2\.bias"
    ):
        convert_pipeline(tmp_path / "b", transformer=_save_sat(tmp_path, missing, "m.pt"), **QUIET)
    no_layer = {k: v for k, v in sd.items() if "transformer.layers.0." not in k}
    with pytest.raises(SatConversionError, match=r"layers \[0\] are missing"):
        convert_pipeline(tmp_path / "c", transformer=_save_sat(tmp_path, no_layer, "l.pt"), **QUIET)
    other = dict(sd, **{"optimizer.state": torch.zeros(1)})
    with pytest.raises(SatConversionError, match="unexpected keys outside"):
        convert_pipeline(tmp_path / "d", transformer=_save_sat(tmp_path, other, "o.pt"), **QUIET)


def test_bad_files(tmp_path, sat_vae):
    good = _save_sat(
        tmp_path, sat_transformer_state(tiny_transformer(FAMILIES["t2v-5b"]), FAMILIES["t2v-5b"])
    )
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SatConversionError, match="truncated or corrupt"):
        load_state_dict(truncated)
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + bytes(16))
    with pytest.raises(SatConversionError, match="not a PyTorch checkpoint"):
        load_state_dict(junk)
    with pytest.raises(SatConversionError, match="looks like a SAT VAE checkpoint"):
        convert_pipeline(tmp_path / "v", transformer=sat_vae[0], **QUIET)
    with pytest.raises(SatConversionError, match="no such file"):
        load_state_dict(tmp_path / "absent.pt")
    torch.save({"module": {"x": torch.zeros(1)}, "meta": _Opaque()}, tmp_path / "pickled.pt")
    with pytest.raises(SatConversionError, match="--trust-pickle"):
        load_state_dict(tmp_path / "pickled.pt")
    assert list(load_state_dict(tmp_path / "pickled.pt", trust_pickle=True)) == ["x"]
    # a SAT save folder: latest -> <iteration>/mp_rank_00_model_states.pt
    (tmp_path / "run" / "1000").mkdir(parents=True)
    (tmp_path / "run" / "latest").write_text("1000\n")
    (tmp_path / "run" / "1000" / "mp_rank_00_model_states.pt").write_bytes(good.read_bytes())
    assert set(load_state_dict(tmp_path / "run")) == set(load_state_dict(good))


class _Opaque:
    """A pickled object that weights-only loading refuses."""


def test_cli_errors(tmp_path, capsys):
    rc = convert_main(
        ["--transformer", "x.pt", "--output", str(tmp_path / "o"), "--dtype", "fp32", "--bf16"]
    )
    assert rc == 2 and "conflicting dtype flags" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    rc = convert_main(["--transformer", "x.pt", "--output", str(tmp_path / "busy")])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    rc = convert_main(["--output", str(tmp_path / "o")])
    assert rc == 2 and "nothing to convert" in capsys.readouterr().err
    rc = convert_main(["--vae", "x.pt", "--output", str(tmp_path / "o"), "--lora-alpha", "nan"])
    assert rc == 2 and "--lora-alpha must be > 0 and finite" in capsys.readouterr().err


def test_cli_expected_failures_exit_2_without_traceback(tmp_path, capsys, sat_vae):
    """Unreadable input, missing keys and OS errors: one line on stderr and exit status 2."""
    src = str(FIXTURES / "5b" / "mp_rank_00_model_states.pt")
    (tmp_path / "file").write_text("x")
    rc = convert_main(["--transformer", src, "--output", str(tmp_path / "file" / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and str(tmp_path / "file") in err
    assert "Traceback" not in err
    sd = torch.load(sat_vae[0], weights_only=True)["state_dict"]
    del sd["encoder.conv_in.conv.weight"]
    torch.save({"state_dict": sd}, tmp_path / "vae.pt")
    args = ["--vae", str(tmp_path / "vae.pt"), "--variant", "5b", "--output", str(tmp_path / "v")]
    rc = convert_main(args)
    err = capsys.readouterr().err
    assert rc == 2 and "'encoder.conv_in.conv.weight'" in err
    (tmp_path / "empty").mkdir()
    rc = convert_main(["--transformer", str(tmp_path / "empty"), "--output", str(tmp_path / "o")])
    assert rc == 2 and "without a SAT checkpoint" in capsys.readouterr().err


def test_vae_missing_size_keys_are_listed(tmp_path, sat_vae):
    sd = torch.load(sat_vae[0], weights_only=True)["state_dict"]
    gone = ["encoder.conv_out.conv.weight", "decoder.conv_out.conv.weight"]
    sd = {k: v for k, v in sd.items() if k not in gone}
    with pytest.raises(
        SatConversionError,
        match=r"x\.pt: unknown VAE layout, 2 of the keys that give its sizes are missing: "
        r"\['encoder\.conv_out\.conv\.weight', 'decoder\.conv_out\.conv\.weight'\]",
    ):
        detect_vae(sd, "x.pt")


def test_overwrite_replaces_the_folder_only_on_success(tmp_path, t5_dir, sat_vae):
    """--overwrite: a failed conversion leaves the old folder as it was; a good one leaves no stale
    file (model_index.json, cogvx.json, vae/) and no temporary folder behind."""
    out = tmp_path / "out"
    first = dict(vae=sat_vae[0], text_encoder_path=t5_dir, vae_norm_groups=4, **QUIET)
    convert_pipeline(out, transformer=FIXTURES / "5b" / "mp_rank_00_model_states.pt", **first)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("model_index.json") in before and Path("cogvx.json") in before
    bad = tmp_path / "bad.pt"
    src = (FIXTURES / "5b" / "mp_rank_00_model_states.pt").read_bytes()
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(SatConversionError, match="truncated or corrupt"):
        convert_pipeline(out, transformer=bad, overwrite=True, **QUIET)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    family = FAMILIES["t2v-1.5"]
    sd = sat_transformer_state(tiny_transformer(family, sample=(8, 12, 17)), family)
    convert_pipeline(out, transformer=_save_sat(tmp_path, sd), overwrite=True, **QUIET)
    assert sorted(p.name for p in out.iterdir()) == ["scheduler", "transformer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "ckpt.pt", "out"]


def test_atomic_path_keeps_the_old_file_until_the_new_one_is_whole(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def test_variant_override_and_size_conflict(tmp_path):
    family = FAMILIES["t2v-5b"]
    dit = {
        k[len(SAT_PREFIX) :]: v
        for k, v in sat_transformer_state(
            tiny_transformer(family, sample=(8, 12, 17)), family
        ).items()
    }
    assert detect_transformer(dit, variant="5b").family.name == "t2v-5b"  # an alias of detected
    # RoPE weights forced to 2b would be converted with sincos positions: refused, naming both
    with pytest.raises(
        SatConversionError,
        match=r"--variant t2v-2b .*sincos positions\) does not fit the weights, detected as "
        r"t2v-5b: CogVideoX 1.0 text-to-video, rope positions .*pos_embedding absent",
    ):
        detect_transformer(dit, variant="2b")
    with pytest.raises(SatConversionError, match="does not fit the weights.*1.0 text-to-video"):
        detect_transformer(dit, variant="i2v-5b")
    with pytest.raises(SatConversionError, match="conflicts with the position table"):
        detect_transformer(dit, sample_size=(60, 90))
    with pytest.raises(ValueError, match="variant 'xl' is unknown"):
        detect_transformer(dit, variant="xl")


def test_variant_contradicting_the_position_scheme_is_refused(tmp_path):
    """A 2b (sincos) checkpoint forced to 5b (RoPE) fails before anything is written."""
    family = FAMILIES["t2v-2b"]
    sd = sat_transformer_state(tiny_transformer(family, sample=(8, 12, 17), text_len=7), family)
    path = _save_sat(tmp_path, sd)
    with pytest.raises(
        SatConversionError, match=r"--variant t2v-5b .*detected as t2v-2b.*pos_embedding present"
    ):
        convert_pipeline(tmp_path / "out", transformer=path, variant="5b", **QUIET)
    assert not (tmp_path / "out").exists()
    out = convert_pipeline(tmp_path / "ok", transformer=path, variant="t2v-2b", **QUIET)
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["snr_shift_scale"] == 3.0


def test_2b_sincos_table_reveals_sizes_and_interpolation():
    """SAT configs may set other interpolation scales: they are read back from the stored table."""
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    family = FAMILIES["t2v-2b"]
    sd = sat_transformer_state(tiny_transformer(family, sample=(8, 12, 17), text_len=7), family)
    dit = {k[len(SAT_PREFIX) :]: v for k, v in sd.items()}
    patches = get_3d_sincos_pos_embed(32, (6, 4), 5, 1.0, 1.3, output_type="pt").flatten(0, 1)
    dit["mixins.pos_embed.pos_embedding"] = torch.cat([torch.zeros(7, 32), patches.float()])[None]
    layout = detect_transformer(dit)
    c = layout.config
    assert (c["sample_height"], c["sample_width"], c["sample_frames"]) == (8, 12, 17)
    assert c["max_text_seq_length"] == 7
    assert (c["spatial_interpolation_scale"], c["temporal_interpolation_scale"]) == (1.0, 1.3)
    assert any("recomputation (max diff" in n for n in layout.notes)


def test_tar(tmp_path):
    out = tmp_path / "out"
    tar = tmp_path / "weights.tar"
    rc = convert_main(
        ["--transformer", str(FIXTURES / "5b" / "mp_rank_00_model_states.pt"),
         "--output", str(out), "--tar", str(tar)]
    )  # fmt: skip
    assert rc == 0
    with tarfile.open(tar) as tf:
        names = set(tf.getnames())
    assert any(n.endswith("transformer/diffusion_pytorch_model.safetensors") for n in names)
    assert any(n.endswith("scheduler/scheduler_config.json") for n in names)


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("transformer.layers.1.attention.query_key_value.weight", 3),
        ("transformer.layers.0.attention.query_key_value.bias", 3),
        ("mixins.adaln_layer.adaLN_modulations.1.1.weight", 12),
    ],
)
@pytest.mark.parametrize("extra_rows", [1, -1, 3, 12])
def test_fused_tensors_must_split_evenly(tmp_path, name, parts, extra_rows):
    """A fused qkv / adaLN tensor whose dim 0 is not parts x hidden is refused, naming it."""
    family = FAMILIES["t2v-5b"]
    sd = sat_transformer_state(tiny_transformer(family), family)
    key = SAT_PREFIX + name
    rows = parts * HIDDEN + extra_rows
    bad = dict(sd, **{key: torch.zeros(rows, *sd[key].shape[1:])})
    shape = re.escape(str((rows, *sd[key].shape[1:])))
    with pytest.raises(
        SatConversionError, match=rf"{re.escape(key)} has shape {shape}.*{parts} x {HIDDEN}"
    ):
        convert_pipeline(tmp_path / "o", transformer=_save_sat(tmp_path, bad), **QUIET)
    assert not (tmp_path / "o").exists()


def test_written_tensors_are_checked_against_the_model(tmp_path, sat_vae):
    """A tensor that comes out of its plan in another shape than planned is an error, not a file."""
    from diffusers import AutoencoderKLCogVideoX

    sd = torch.load(sat_vae[0], weights_only=True)["state_dict"]
    config = dict(detect_vae(sd), norm_num_groups=4)
    plan, _ = plan_vae(sd)
    key = "decoder.conv_out.conv.weight"
    good = plan[key]
    plan[key] = Planned(good.shape, lambda: good.make()[:1])
    with pytest.raises(
        SatConversionError,
        match=rf"vae\.pt: {re.escape(key)} comes out of the checkpoint as \(1, .*"
        r"AutoencoderKLCogVideoX expects \(3, ",
    ):
        write_model_folder(
            tmp_path / "vae", AutoencoderKLCogVideoX, config, plan, torch.float32,
            source="vae.pt", **QUIET,
        )  # fmt: skip
