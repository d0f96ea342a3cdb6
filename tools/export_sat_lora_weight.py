"""Export a SAT CogVideoX LoRA to a diffusers LoRA file (`load_lora_weights` ready).

    python tools/export_sat_lora_weight.py --sat-pt ckpts/lora/1000/mp_rank_00_model_states.pt \\
        --output my-lora

Any depth and rank; SAT's scale alpha/r (lora_alpha defaults to 1) is folded into lora_B.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cogvx.convert.sat_lora import export_lora
from cogvx.errors import CogvxError


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with a one-line error on bad input or files)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sat-pt", required=True, type=Path, help="SAT LoRA checkpoint .pt or its save folder"
    )
    p.add_argument(
        "--output", required=True, type=Path, help="folder for pytorch_lora_weights.safetensors"
    )
    p.add_argument(
        "--alpha", type=float, default=1.0, help="SAT lora_alpha used in training (default 1)"
    )
    p.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], help="output dtype (default: as stored)"
    )
    p.add_argument(
        "--trust-pickle", action="store_true", help="allow pickled objects (trusted files only)"
    )
    args = p.parse_args(argv)
    try:
        export_lora(args.sat_pt, args.output, args.alpha, args.dtype, args.trust_pickle)
    except (ValueError, CogvxError, OSError) as e:  # bad input or files; other bugs trace back
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
