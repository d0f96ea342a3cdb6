"""Build the enhance model's weights folder from the released files (then pack it for COG_WEIGHTS).

python tools/build_enhance_weights.py --venhancer venhancer_v2.pt \\
    --sd21 ./stable-diffusion-2-1 --svd ./stable-video-diffusion-img2vid \\
    --realesrgan RealESRGAN_x4plus.pth --rife flownet.pkl --out ./enhance-weights
python tools/pack_weights.py ./enhance-weights enhance.tar

--sd21: a stabilityai/stable-diffusion-2-1 folder (text_encoder/ and tokenizer/ are used);
--svd: a stabilityai/stable-video-diffusion-img2vid folder (vae/ is used). Either group may be left
out (a fast-only or VEnhancer-only folder). Every part is loaded and checked before it is written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cogvx.fast.models import FAST_DIR, RIFE_FILES, UPSCALER_FILES
from cogvx.services.enhance import VENHANCER_DIR

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _subfolder(root: Path, name: str, flag: str) -> Path:
    """`root/name` if it exists, else `root` itself when it looks like that part."""
    for cand in (root / name, root):
        if (cand / "config.json").is_file() or (cand / "tokenizer_config.json").is_file():
            return cand
    raise SystemExit(f"{flag} {root}: no {name}/ folder with a config in it")


def build_venhancer(
    checkpoint: Path, sd21: Path, svd: Path, out: Path, dtype: torch.dtype, log=print
) -> Path:
    """unet/ + controlnet/ (converted), text_encoder/ + tokenizer/ (SD-2.1), vae/ (SVD)."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPTextModel, CLIPTokenizer

    from cogvx.venhancer.convert import convert_checkpoint
    from cogvx.venhancer.pipeline import VEnhancer

    dest = out / VENHANCER_DIR
    t0 = time.perf_counter()
    convert_checkpoint(checkpoint, dest, dtype=dtype)
    log(f"converted {checkpoint.name} -> {dest}/unet, controlnet ({dtype})")
    tok = CLIPTokenizer.from_pretrained(_subfolder(sd21, "tokenizer", "--sd21"))
    if tok.pad_token != "!":
        log(f"warning: the tokenizer pads with {tok.pad_token!r}; VEnhancer's (open_clip) uses '!'")
    tok.save_pretrained(dest / "tokenizer")
    text = CLIPTextModel.from_pretrained(_subfolder(sd21, "text_encoder", "--sd21"))
    text.to(torch.float32).save_pretrained(dest / "text_encoder")
    layers = text.config.num_hidden_layers
    log(f"text encoder: {layers} layers, hidden {text.config.hidden_size} (float32)")
    vae = AutoencoderKLTemporalDecoder.from_pretrained(_subfolder(svd, "vae", "--svd"))
    vae.to(torch.float32).save_pretrained(dest / "vae")
    log("vae: AutoencoderKLTemporalDecoder (float32)")
    VEnhancer.from_folder(dest, device="cpu", dtype=dtype)  # the folder loads as the service does
    log(f"VEnhancer folder checked in {time.perf_counter() - t0:.1f}s")
    return dest


def build_fast(realesrgan: Path, rife: Path, out: Path, log=print) -> Path:
    """fast/realesrgan.safetensors and fast/flownet.safetensors, each checked by loading it."""
    from safetensors.torch import save_file

    from cogvx.fast.rife import ifnet_from_state_dict
    from cogvx.fast.upscale import load_state_dict_file, upscaler_from_state_dict

    dest = out / FAST_DIR
    dest.mkdir(parents=True, exist_ok=True)
    sd = load_state_dict_file(realesrgan)
    up = upscaler_from_state_dict(sd, device="cpu", source=str(realesrgan))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dest / UPSCALER_FILES[0]))
    log(f"Real-ESRGAN: {up.architecture} x{up.scale} -> {dest / UPSCALER_FILES[0]}")
    sd = {k.removeprefix("module."): v for k, v in load_state_dict_file(rife).items()}
    net = ifnet_from_state_dict(sd, device="cpu", source=str(rife))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dest / RIFE_FILES[0]))
    log(f"RIFE HDv3 (width {net.width}) -> {dest / RIFE_FILES[0]}")
    return dest


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--venhancer", type=Path, help="venhancer_v2.pt / venhancer_paper.pt")
    parser.add_argument("--sd21", type=Path, help="stable-diffusion-2-1 folder (text encoder)")
    parser.add_argument("--svd", type=Path, help="stable-video-diffusion-img2vid folder (VAE)")
    parser.add_argument("--realesrgan", type=Path, help="Real-ESRGAN .pth or .safetensors")
    parser.add_argument("--rife", type=Path, help="RIFE HDv3 flownet.pkl or .safetensors")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float16", help="UNet storage")
    args = parser.parse_args(argv)
    ve = [args.venhancer, args.sd21, args.svd]
    fast = [args.realesrgan, args.rife]
    if any(ve) and not all(ve):
        parser.error("VEnhancer needs all of --venhancer, --sd21 and --svd")
    if any(fast) and not all(fast):
        parser.error("the fast path needs both --realesrgan and --rife")
    if not any(ve + fast):
        parser.error("give the VEnhancer files, the fast-path files, or both")
    for path in (p for p in ve + fast if p is not None):
        if not path.exists():
            parser.error(f"{path} does not exist")
    if all(ve):
        build_venhancer(args.venhancer, args.sd21, args.svd, args.out, DTYPES[args.dtype])
    if all(fast):
        build_fast(args.realesrgan, args.rife, args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out} ({size / 1e9:.2f} GB); pack it for COG_WEIGHTS with:")
    print(f"  python tools/pack_weights.py {args.out} enhance.tar")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
