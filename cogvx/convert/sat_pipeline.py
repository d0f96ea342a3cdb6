"""Assemble a diffusers CogVideoX pipeline folder from SAT checkpoints (transformer, VAE) + a T5."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from cogvx.convert.sat import (
    DTYPES,
    Log,
    load_state_dict,
    source_dtype,
    split_sat_model,
    write_model_folder,
    write_text_atomic,
)
from cogvx.convert.sat_keys import check_lora_alpha, plan_transformer
from cogvx.convert.sat_layout import FAMILIES, SatFamily, detect_transformer, get_family
from cogvx.convert.sat_vae import convert_vae
from cogvx.errors import SetupError
from cogvx.lora.sat_format import SatConversionError
from cogvx.models import scheduler_config

TOKENIZER_FILES = (
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_text_encoder(src: str | Path, out: str | Path, text_dim: int | None = None) -> str:
    """Copy a T5 encoder + tokenizer into `out/text_encoder` and `out/tokenizer`; returns the
    tokenizer class name. `src` is a diffusers folder (with those subfolders) or one T5 folder."""
    src = Path(src)
    if (src / "text_encoder").is_dir():
        te, tok = src / "text_encoder", src / "tokenizer"
    else:
        te, tok = src, src
    if not (te / "config.json").is_file():
        raise SatConversionError(
            f"--text-encoder-path {src}: no T5 config.json (expected text_encoder/ and tokenizer/ "
            "subfolders, or a T5 model folder)"
        )
    cfg = json.loads((te / "config.json").read_text())
    if cfg.get("model_type") != "t5":
        raise SatConversionError(
            f"--text-encoder-path {src}: model_type is {cfg.get('model_type')!r}; "
            "CogVideoX needs T5"
        )
    if text_dim is not None and cfg.get("d_model") != text_dim:
        raise SatConversionError(
            f"--text-encoder-path {src}: T5 d_model {cfg.get('d_model')} does not match the "
            f"transformer's text dim {text_dim}"
        )
    tok_files = [tok / n for n in TOKENIZER_FILES if (tok / n).is_file()]
    if not any(f.name in ("spiece.model", "tokenizer.json") for f in tok_files):
        raise SatConversionError(
            f"--text-encoder-path {src}: no tokenizer (spiece.model or tokenizer.json) in {tok}"
        )
    out = Path(out)
    tok_names = {f.name for f in tok_files}
    for f in sorted(te.iterdir()):
        if f.is_file() and (te != tok or f.name not in tok_names) and not f.name.startswith("."):
            _link_or_copy(f, out / "text_encoder" / f.name)
    for f in tok_files:
        _link_or_copy(f, out / "tokenizer" / f.name)
    tok_cfg = tok / "tokenizer_config.json"
    cls = json.loads(tok_cfg.read_text()).get("tokenizer_class") if tok_cfg.is_file() else None
    return cls or "T5Tokenizer"


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def convert_pipeline(
    output: str | Path,
    transformer: str | Path | None = None,
    vae: str | Path | None = None,
    text_encoder_path: str | Path | None = None,
    variant: str | None = None,
    dtype: str | None = None,
    vae_dtype: str = "fp32",
    max_shard_size: str = "5GB",
    sample_size: tuple[int, int] | None = None,
    sample_frames: int | None = None,
    max_text_seq_length: int | None = None,
    lora: str | None = None,
    lora_alpha: float = 1.0,
    vae_norm_groups: int | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    tar: str | Path | None = None,
    log: Log = print,
) -> Path:
    """Convert SAT checkpoints into a diffusers pipeline folder (partial if pieces are missing).

    Everything is written into a temporary sibling of `output`, which replaces `output` only once
    the conversion succeeded: a failure leaves `output` as it was (`overwrite` replaces it whole).
    """
    t0 = time.perf_counter()
    out = Path(output)
    if transformer is None and vae is None:
        raise ValueError("nothing to convert: pass --transformer and/or --vae")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(
            f"--output {out} exists and is not empty; pass --overwrite or pick a new folder"
        )
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not allowed; choose one of {sorted(DTYPES)}")
    if vae_dtype not in DTYPES:
        raise ValueError(
            f"--vae-dtype {vae_dtype!r} is not allowed; choose one of {sorted(DTYPES)}"
        )
    if lora not in (None, "merge", "drop"):
        raise ValueError(f"--lora {lora!r} is not allowed; choose merge or drop")
    check_lora_alpha(lora_alpha, "--lora-alpha")
    if tar is not None:
        try:
            from cogvx.weights.pack import pack_folder
        except ImportError as e:
            raise SetupError(
                f"--tar needs cogvx.weights.pack_folder, unavailable here ({e})"
            ) from e
    family = get_family(variant) if variant else None
    if transformer is None and vae is not None and family is None:
        raise ValueError(
            f"--vae alone cannot tell the latent scaling: pass --variant ({', '.join(FAMILIES)})"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        _convert_into(
            work, family, transformer, vae, text_encoder_path, variant, dtype, vae_dtype,
            max_shard_size, sample_size, sample_frames, max_text_seq_length, lora, lora_alpha,
            vae_norm_groups, trust_pickle, log,
        )  # fmt: skip
        _replace_folder(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"done: {out} ({_folder_size(out) / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s")
    if tar is not None:
        pack_folder(out, Path(tar), log=log)
    return out


def _replace_folder(new: Path, out: Path) -> None:
    """Put the finished folder `new` at `out` by renames; an existing `out` is removed after."""
    if not out.exists():
        os.rename(new, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    if old.is_symlink():  # --output was a link to a folder: the link is replaced, not its target
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


def _convert_into(
    out: Path,
    family: SatFamily | None,
    transformer: str | Path | None,
    vae: str | Path | None,
    text_encoder_path: str | Path | None,
    variant: str | None,
    dtype: str | None,
    vae_dtype: str,
    max_shard_size: str,
    sample_size: tuple[int, int] | None,
    sample_frames: int | None,
    max_text_seq_length: int | None,
    lora: str | None,
    lora_alpha: float,
    vae_norm_groups: int | None,
    trust_pickle: bool,
    log: Log,
) -> None:
    """The conversion of `convert_pipeline` (arguments checked) into the empty folder `out`."""
    from diffusers import CogVideoXTransformer3DModel

    text_dim = None
    vae_sd, vae_src = None, vae
    if transformer is not None:
        sd = load_state_dict(transformer, trust_pickle)
        dit, embedded_vae, skipped = split_sat_model(sd, transformer)
        layout = detect_transformer(
            dit, transformer, variant, sample_size, sample_frames, max_text_seq_length
        )
        for note in layout.notes:
            log(note)
        log(f"transformer: {layout.describe()}")
        if skipped:
            log(f"skipped {len(skipped)} conditioner.* keys (T5 comes from --text-encoder-path)")
        plan, dropped = plan_transformer(dit, layout, transformer, lora, lora_alpha)
        if dropped:
            log(
                f"dropped {len(dropped)} keys diffusers recomputes or does not use: "
                f"{sorted(dropped)[:6]}"
            )
        t_dtype = DTYPES[dtype] if dtype else source_dtype(dit.values())
        log(f"writing transformer in {str(t_dtype).removeprefix('torch.')}")
        write_model_folder(
            out / "transformer", CogVideoXTransformer3DModel, layout.config, plan, t_dtype,
            max_shard_size, transformer, log,
        )  # fmt: skip
        family = layout.family  # = --variant, which detect_transformer checked
        text_dim = layout.config["text_embed_dim"]
        _write_native_size(out, layout)
        if embedded_vae and vae is None:
            vae_sd, vae_src = embedded_vae, f"{transformer} (first_stage_model.*)"
        del sd, dit
    # a transformer gives its family; --vae alone without --variant was refused
    assert family is not None
    if vae_src is not None:
        if vae_sd is None:
            assert vae is not None  # no embedded VAE taken: vae_src is still vae
            vae_sd = load_state_dict(vae, trust_pickle)
            if all(k.startswith("first_stage_model.") for k in vae_sd):
                vae_sd = {k[len("first_stage_model.") :]: v for k, v in vae_sd.items()}
        convert_vae(
            vae_sd, out / "vae", family.vae_scaling_factor, family.generation == "1.5",
            DTYPES[vae_dtype], vae_norm_groups, max_shard_size, vae_src, log,
        )  # fmt: skip
        del vae_sd
    import diffusers

    sched_cls = getattr(diffusers, family.scheduler)
    sched_cls(**scheduler_config(family.variant)).save_pretrained(out / "scheduler")
    log(f"scheduler: {family.scheduler}, snr_shift_scale {family.snr_shift_scale}")
    tok_cls = None
    if text_encoder_path is not None:
        tok_cls = copy_text_encoder(text_encoder_path, out, text_dim)
        log(f"text encoder + tokenizer ({tok_cls}) copied from {text_encoder_path}")
    have = {p.name for p in out.iterdir() if p.is_dir()}
    needed = {"transformer", "vae", "scheduler", "text_encoder", "tokenizer"}
    if needed <= have:
        index = {
            "_class_name": family.pipeline,
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", family.scheduler],
            "text_encoder": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", tok_cls],
            "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLCogVideoX"],
        }
        write_text_atomic(out / "model_index.json", json.dumps(index, indent=2) + "\n")
        log(f"pipeline: {family.pipeline} (model_index.json written)")
    else:
        log(
            f"partial folder (no model_index.json): missing {sorted(needed - have)}; "
            "load parts with e.g. "
            "CogVideoXTransformer3DModel.from_pretrained(OUT, subfolder='transformer')"
        )


def _write_native_size(out: Path, layout) -> None:
    """Record a non-default 1.0 training size in cogvx.json so predictors use it."""
    c, f = layout.config, layout.family
    if f.generation != "1.0" or (c["sample_height"], c["sample_width"]) == f.sample[:2]:
        return
    from cogvx.models import FOLDER_OVERRIDES

    size = {"height": c["sample_height"] * 8, "width": c["sample_width"] * 8}
    write_text_atomic(out / FOLDER_OVERRIDES, json.dumps(size) + "\n")
