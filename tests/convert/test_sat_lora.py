"""SAT LoRA export: loaded with `load_lora_weights`, it reproduces the SAT LoRA model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cogvx.convert.sat_layout import FAMILIES
from cogvx.convert.sat_lora import export_lora
from cogvx.convert.sat_pipeline import convert_pipeline
from cogvx.dev.sat_synth import sat_lora_state, sat_transformer_state, tiny_transformer
from cogvx.lora.sat_format import SAT_PREFIX, SatConversionError
from tools.export_sat_lora_weight import main as export_main

QUIET = {"log": lambda _msg: None}
HIDDEN = 32  # tiny_transformer: 2 heads x 16


def _sat_lora_merge(base: dict, lora: dict, layers: int, scale: float) -> dict:
    """What SAT's LoraLinear computes, as merged weights: W + scale * cat_i(B_i @ A_i)."""
    merged = dict(base)
    for n in range(layers):
        for mod, parts in (("query_key_value", 3), ("dense", 1)):
            key = f"{SAT_PREFIX}transformer.layers.{n}.attention.{mod}"
            delta = torch.cat(
                [lora[f"{key}.matrix_B.{i}"] @ lora[f"{key}.matrix_A.{i}"] for i in range(parts)]
            )
            merged[f"{key}.weight"] = base[f"{key}.weight"] + scale * delta
    return merged


def _sat_lora_checkpoint(base: dict, lora: dict) -> dict:
    """A SAT LoRA training checkpoint: LoRA'd linears keep their weights under `.original.`."""
    out = {}
    for k, v in base.items():
        if ".attention.query_key_value." in k or ".attention.dense." in k:
            k = k.replace(".weight", ".original.weight").replace(".bias", ".original.bias")
        out[k] = v
    return {**out, **lora}


def _load_transformer(folder: Path):
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel.from_pretrained(folder / "transformer").eval()


def _run(model, seed: int = 0) -> torch.Tensor:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, model.config.in_channels, 8, 12, generator=g)
    text = torch.randn(1, 7, 32, generator=g)
    rope = get_3d_rotary_pos_embed(16, ((0, 0), (4, 6)), (4, 6), 4)
    with torch.no_grad():
        return model(x, text, torch.tensor([700]), image_rotary_emb=rope, return_dict=False)[0]


@pytest.mark.parametrize(("layers", "rank", "alpha"), [(2, 4, None), (3, 8, 16.0)])
def test_exported_lora_reproduces_sat_lora_model(tmp_path, capsys, layers, rank, alpha):
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    family = FAMILIES["t2v-5b"]
    base = sat_transformer_state(
        tiny_transformer(family, num_layers=layers, sample=(8, 12, 17), seed=layers), family
    )
    lora = sat_lora_state(layers, HIDDEN, rank, seed=rank)
    scale = (alpha or 1.0) / rank
    torch.save({"module": _sat_lora_merge(base, lora, layers, scale)}, tmp_path / "merged.pt")
    torch.save({"module": _sat_lora_checkpoint(base, lora)}, tmp_path / "lora.pt")

    want = _run(
        _load_transformer(
            convert_pipeline(tmp_path / "ref", transformer=tmp_path / "merged.pt", **QUIET)
        )
    )
    args = ["--sat-pt", str(tmp_path / "lora.pt"), "--output", str(tmp_path / "export")]
    assert export_main(args + (["--alpha", str(alpha)] if alpha else [])) == 0
    printed = capsys.readouterr().out
    assert f"{2 * layers} modules over {layers} layers" in printed and f"rank {rank}" in printed
    assert f"{8 * layers} tensors" in printed  # (q, k, v, out) x (A, B) per layer

    base_dir = convert_pipeline(
        tmp_path / "base", transformer=tmp_path / "lora.pt", lora="drop", **QUIET
    )
    pipe = CogVideoXPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=_load_transformer(base_dir),
        scheduler=CogVideoXDPMScheduler(),
    )
    plain = _run(pipe.transformer)
    pipe.load_lora_weights(tmp_path / "export")
    got = _run(pipe.transformer)
    assert (want - plain).abs().max() > 1e-2  # the LoRA changes the output
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    pipe.unload_lora_weights()
    assert torch.equal(_run(pipe.transformer), plain)

    merged_dir = convert_pipeline(
        tmp_path / "merge",
        transformer=tmp_path / "lora.pt",
        lora="merge",
        lora_alpha=alpha or 1.0,
        **QUIET,
    )
    torch.testing.assert_close(_run(_load_transformer(merged_dir)), want, rtol=0, atol=1e-5)


def test_lora_errors(tmp_path):
    family = FAMILIES["t2v-5b"]
    base = sat_transformer_state(tiny_transformer(family), family)
    torch.save({"module": base}, tmp_path / "base.pt")
    with pytest.raises(SatConversionError, match="holds no SAT LoRA matrices"):
        export_lora(tmp_path / "base.pt", tmp_path / "o1", **QUIET)
    lora = sat_lora_state(2, HIDDEN, 4)
    del lora[f"{SAT_PREFIX}transformer.layers.1.attention.query_key_value.matrix_B.2"]
    torch.save({"module": {**base, **lora}}, tmp_path / "partial.pt")
    with pytest.raises(
        SatConversionError, match=r"layer 1 query_key_value: expected matrix_A\.0-2"
    ):
        export_lora(tmp_path / "partial.pt", tmp_path / "o2", **QUIET)
    with pytest.raises(SatConversionError, match="--lora merge"):
        convert_pipeline(tmp_path / "o3", transformer=tmp_path / "partial.pt", **QUIET)
    with pytest.raises(ValueError, match="--alpha must be > 0"):
        export_lora(tmp_path / "partial.pt", tmp_path / "o4", alpha=0, **QUIET)
    odd = {f"{SAT_PREFIX}transformer.layers.0.cross_attention.dense.matrix_A.0": torch.zeros(4, 32)}
    torch.save({"module": odd}, tmp_path / "odd.pt")
    with pytest.raises(SatConversionError, match="does not know"):
        export_lora(tmp_path / "odd.pt", tmp_path / "o5", **QUIET)


def test_lora_dtype(tmp_path):
    lora = {k: v.bfloat16() for k, v in sat_lora_state(2, HIDDEN, 4).items()}
    torch.save({"module": lora}, tmp_path / "bf16.pt")
    from safetensors.torch import load_file

    path = export_lora(tmp_path / "bf16.pt", tmp_path / "a", **QUIET)
    tensors = load_file(str(path))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert len(tensors) == 16
    key = "transformer.transformer_blocks.1.attn1.to_v.lora_B.weight"
    src = lora[f"{SAT_PREFIX}transformer.layers.1.attention.query_key_value.matrix_B.2"]
    assert torch.equal(tensors[key], (src.float() / 4).bfloat16())
    path = export_lora(tmp_path / "bf16.pt", tmp_path / "b", dtype="fp32", **QUIET)
    assert {t.dtype for t in load_file(str(path)).values()} == {torch.float32}


@pytest.mark.parametrize(
    ("matrix", "shape", "delta"),
    [
        ("query_key_value.matrix_B.1", (1, 4), (1, HIDDEN)),  # would broadcast over every row
        ("dense.matrix_A.0", (4, 2 * HIDDEN), (HIDDEN, 2 * HIDDEN)),
    ],
)
def test_lora_merge_checks_delta_shapes(tmp_path, matrix, shape, delta):
    """--lora merge refuses a B @ A whose shape is not the base weight's, naming the key."""
    family = FAMILIES["t2v-5b"]
    base = sat_transformer_state(tiny_transformer(family), family)
    lora = sat_lora_state(2, HIDDEN, 4)
    key = f"{SAT_PREFIX}transformer.layers.1.attention.{matrix}"
    lora[key] = torch.ones(shape)
    torch.save({"module": _sat_lora_checkpoint(base, lora)}, tmp_path / "lora.pt")
    target = "to_k" if "query_key_value" in matrix else "to_out.0"
    with pytest.raises(
        SatConversionError,
        match=rf"delta B @ A for transformer_blocks\.1\.attn1\.{re.escape(target)}\.weight is "
        rf"{re.escape(str(delta))} \(.*{re.escape(key)} {re.escape(str(shape))}.*\), but the "
        rf"base weight is \({HIDDEN}, {HIDDEN}\)",
    ):
        convert_pipeline(tmp_path / "o", transformer=tmp_path / "lora.pt", lora="merge", **QUIET)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_lora_alpha_must_be_finite_and_positive(tmp_path, capsys, alpha):
    lora = sat_lora_state(2, HIDDEN, 4)
    torch.save({"module": lora}, tmp_path / "lora.pt")
    want = rf"must be > 0 and finite .*got {re.escape(repr(alpha))}"
    with pytest.raises(ValueError, match=rf"--alpha {want}"):
        export_lora(tmp_path / "lora.pt", tmp_path / "o", alpha=alpha, **QUIET)
    rc = export_main(["--sat-pt", str(tmp_path / "lora.pt"), "--output", str(tmp_path / "o"),
                      "--alpha", str(alpha)])  # fmt: skip
    assert rc == 2 and re.search(want, capsys.readouterr().err)
    family = FAMILIES["t2v-5b"]
    base = sat_transformer_state(tiny_transformer(family), family)
    torch.save({"module": _sat_lora_checkpoint(base, lora)}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=rf"--lora-alpha {want}"):
        convert_pipeline(
            tmp_path / "m", transformer=tmp_path / "ckpt.pt", lora="merge", lora_alpha=alpha,
            **QUIET,
        )  # fmt: skip
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()


def test_lora_rank_zero_is_refused(tmp_path):
    """SAT's scale is alpha / r: a rank-0 LoRA is an error naming the module, not a crash."""
    lora = {
        k: (v[:0] if ".matrix_A." in k else v[:, :0])
        for k, v in sat_lora_state(2, HIDDEN, 4).items()
    }
    torch.save({"module": lora}, tmp_path / "lora.pt")
    with pytest.raises(SatConversionError, match=r"layer 0 dense has LoRA rank 0"):
        export_lora(tmp_path / "lora.pt", tmp_path / "o", **QUIET)
    family = FAMILIES["t2v-5b"]
    base = sat_transformer_state(tiny_transformer(family), family)
    torch.save({"module": _sat_lora_checkpoint(base, lora)}, tmp_path / "ckpt.pt")
    with pytest.raises(SatConversionError, match=r"LoRA rank 0.*at least 1"):
        convert_pipeline(tmp_path / "m", transformer=tmp_path / "ckpt.pt", lora="merge", **QUIET)


@pytest.mark.parametrize(
    ("matrix", "shape", "want"),
    [
        ("matrix_A", (0, HIDDEN), r"LoRA rank 0"),  # A [r, in] with r = 0
        ("matrix_A", (4, 0), r"an empty matrix"),  # in = 0
        ("matrix_B", (0, 4), r"an empty matrix"),  # out = 0
        ("matrix_B", (HIDDEN, 0), r"LoRA rank 0"),  # B [out, r] with r = 0
    ],
)
def test_empty_lora_matrices_are_refused_by_the_cli(tmp_path, capsys, matrix, shape, want):
    """The exporter CLI exits 2 naming the file's own key of a LoRA matrix with a zero dim."""
    lora = sat_lora_state(2, HIDDEN, 4)
    key = f"{SAT_PREFIX}transformer.layers.1.attention.query_key_value.{matrix}.2"
    lora[key] = torch.zeros(shape)
    torch.save({"module": lora}, tmp_path / "lora.pt")
    rc = export_main(["--sat-pt", str(tmp_path / "lora.pt"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(rf"layer 1 query_key_value has {want}: ", err), err
    assert f"{key} has shape {shape}" in err
    assert not (tmp_path / "o").exists()


def test_lora_export_replaces_the_file_whole(tmp_path):
    """A second export replaces the first by a rename and leaves no temporary file behind."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    out.mkdir()
    (out / "pytorch_lora_weights.safetensors").write_bytes(b"old")
    torch.save({"module": sat_lora_state(2, HIDDEN, 4)}, tmp_path / "lora.pt")
    path = export_lora(tmp_path / "lora.pt", out, **QUIET)
    assert [p.name for p in out.iterdir()] == ["pytorch_lora_weights.safetensors"]
    assert len(load_file(str(path))) == 16
