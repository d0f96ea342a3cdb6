"""Convert SAT CogVideoX checkpoints (transformer, VAE) into a diffusers pipeline folder.

    python tools/convert_weight_sat2hf.py \\
        --transformer CogVideoX-5b-sat/transformer --vae CogVideoX-5b-sat/vae/3d-vae.pt \\
        --text-encoder-path THUDM/CogVideoX-5b-folder --dtype bf16 --output CogVideoX-5b-diffusers

The variant (2b, 5b, 5b-I2V, 1.5, 1.5-I2V), layer and head counts are read from the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cogvx.convert.sat import dtype_from_flags
from cogvx.convert.sat_layout import FAMILIES
from cogvx.convert.sat_pipeline import convert_pipeline
from cogvx.errors import CogvxError


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sample-size {text!r}: expected HxW, e.g. 60x90"
        ) from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    variants = [f.name for f in FAMILIES.values()] + [
        a for f in FAMILIES.values() for a in f.aliases
    ]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transformer", type=Path, help="SAT transformer .pt, or its save folder")
    p.add_argument("--vae", type=Path, help="SAT VAE checkpoint (e.g. vae/3d-vae.pt)")
    p.add_argument(
        "--text-encoder-path", type=Path,
        help="folder with text_encoder/ + tokenizer/ (a diffusers CogVideoX folder) or a T5 folder",
    )  # fmt: skip
    p.add_argument("--output", required=True, type=Path, help="folder to write")
    p.add_argument(
        "--variant",
        choices=variants,
        help="the variant (needed with --vae alone); refused when the weights say otherwise",
    )
    p.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], help="transformer dtype (default: as stored)"
    )
    p.add_argument("--fp16", action="store_true", help="same as --dtype fp16")
    p.add_argument("--bf16", action="store_true", help="same as --dtype bf16")
    p.add_argument("--vae-dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    p.add_argument("--sample-size", type=_size, help="training latent size HxW (default: detected)")
    p.add_argument("--sample-frames", type=int, help="training frame count (default: detected)")
    p.add_argument("--max-text-seq-length", type=int, help="text tokens (default: detected or 226)")
    p.add_argument("--lora", choices=["merge", "drop"], help="what to do with SAT LoRA matrices")
    p.add_argument("--lora-alpha", type=float, default=1.0, help="SAT lora_alpha (scale = alpha/r)")
    p.add_argument("--vae-norm-groups", type=int, help="VAE GroupNorm groups (default 32)")
    p.add_argument(
        "--trust-pickle", action="store_true", help="allow pickled objects (trusted files only)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty output folder, whole, once the conversion succeeded",
    )
    p.add_argument("--tar", type=Path, help="also pack the folder into this tarball")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with a one-line error on bad input or files)."""
    args = build_parser().parse_args(argv)
    try:
        dtype = dtype_from_flags(args.dtype, args.fp16, args.bf16)
        convert_pipeline(
            args.output,
            transformer=args.transformer,
            vae=args.vae,
            text_encoder_path=args.text_encoder_path,
            variant=args.variant,
            dtype=dtype,
            vae_dtype=args.vae_dtype,
            max_shard_size=args.max_shard_size,
            sample_size=args.sample_size,
            sample_frames=args.sample_frames,
            max_text_seq_length=args.max_text_seq_length,
            lora=args.lora,
            lora_alpha=args.lora_alpha,
            vae_norm_groups=args.vae_norm_groups,
            trust_pickle=args.trust_pickle,
            overwrite=args.overwrite,
            tar=args.tar,
        )
    except (ValueError, CogvxError, OSError) as e:  # bad input or files; other bugs trace back
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
