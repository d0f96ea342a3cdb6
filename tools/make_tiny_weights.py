"""Build a tiny random model folder with the real diffusers layout of a variant (offline).

python tools/make_tiny_weights.py --model t2v-5b --out /tmp/tiny-t2v-5b
python tools/make_tiny_weights.py --model enhance --out /tmp/tiny-enhance   (venhancer/ + fast/)
python tools/make_tiny_weights.py --model caption --out /tmp/tiny-caption   (CogVLM2-Caption)
python tools/make_tiny_weights.py --model llm --out /tmp/tiny-llm           (Qwen2.5-7B-Instruct)
python tools/make_tiny_weights.py --model flux --out /tmp/tiny-flux         (FLUX.1-dev)

The caption folder has the official THUDM/cogvlm2-llama3-caption layout (config.json, BF16
model.safetensors under the remote code's key names, a Llama-3-style tokenizer) at the golden
fixture's sizes; its LM head favours the tokenizer's own ids, so greedy captions are real text.
The llm folder is a Qwen2ForCausalLM with Qwen2.5-7B-Instruct's config at tiny sizes (BF16
safetensors, a Qwen2-format BPE tokenizer with the ChatML chat template; greedy output is words,
<|im_end|> stops it); AutoModelForCausalLM/AutoTokenizer load it. The flux folder is a diffusers
FluxPipeline with FLUX.1-dev's configs at tiny sizes (CLIP + T5 tokenizers built offline; image
sizes must be multiples of 16). Same --seed, byte-identical files.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cogvx.dev.tiny import save_tiny_weights
from cogvx.models import VARIANTS

EXTRA = ("enhance", "caption", "llm", "flux")  # the non-CogVideoX folders


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=[*sorted(VARIANTS), *EXTRA])
    parser.add_argument("--out", required=True, type=Path, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.model == "enhance":
        from cogvx.dev.enhance import save_tiny_enhance_weights

        out = save_tiny_enhance_weights(args.out, seed=args.seed)
    elif args.model == "caption":
        from cogvx.dev.caption import save_tiny_caption_weights

        out = save_tiny_caption_weights(args.out, seed=args.seed)
    elif args.model == "llm":
        from cogvx.dev.llm import save_tiny_llm

        out = save_tiny_llm(args.out, seed=args.seed)
    elif args.model == "flux":
        from cogvx.dev.flux import save_tiny_flux

        out = save_tiny_flux(args.out, seed=args.seed)
    else:
        out = save_tiny_weights(args.model, args.out, seed=args.seed)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"wrote tiny {args.model} to {out} ({size / 1e6:.2f} MB, {time.perf_counter() - t0:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
