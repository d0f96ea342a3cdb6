"""SAT LoRA (`matrix_A`/`matrix_B` on query_key_value and dense) to a diffusers LoRA file.

SAT's LoraLinear adds `scale * x @ A_i.T @ B_i.T` per output partition (q, k, v for
query_key_value), with scale = lora_alpha / r and lora_alpha = 1 by default. diffusers' CogVideoX
loader ignores network alphas, so the scale is folded into `lora_B`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cogvx.convert.sat import DTYPES, Log, load_state_dict, source_dtype
from cogvx.convert.sat_keys import check_lora_alpha
from cogvx.lora.sat_format import (  # noqa: F401 (re-exported: the LoRA pieces of this tool)
    LoraModule,
    collect_lora,
    lora_deltas,
    lora_to_diffusers,
)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def export_lora(
    checkpoint: str | Path,
    out_dir: str | Path,
    alpha: float = 1.0,
    dtype: str | None = None,
    trust_pickle: bool = False,
    log: Log = print,
) -> Path:
    """Export the SAT LoRA in `checkpoint` to `out_dir/pytorch_lora_weights.safetensors`."""
    from diffusers import CogVideoXPipeline

    check_lora_alpha(alpha, "--alpha")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not allowed; choose one of {sorted(DTYPES)}")
    sd = load_state_dict(checkpoint, trust_pickle=trust_pickle)
    modules = collect_lora(sd, checkpoint)  # refuses rank 0 and mismatched pairs
    ignored = sum(1 for k in sd if ".matrix_" not in k)
    ranks = sorted({m.rank for m in modules})
    layers = sorted({m.layer for m in modules})
    lora_tensors = [t for m in modules for t in (*m.a.values(), *m.b.values())]
    out_dtype = DTYPES[dtype] if dtype else source_dtype(lora_tensors)
    state = lora_to_diffusers(modules, alpha, out_dtype)
    log(
        f"SAT LoRA: {len(modules)} modules over {len(layers)} layers "
        f"({layers[0]}..{layers[-1]}), rank {'/'.join(map(str, ranks))}, alpha {alpha:g} "
        f"-> scale {'/'.join(f'{alpha / r:g}' for r in ranks)} folded into lora_B"
    )
    if ignored:
        log(f"ignored {ignored} non-LoRA tensors (base model weights)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LORA_WEIGHT_NAME
    work = out / f".{LORA_WEIGHT_NAME}.partial-{os.getpid()}"  # then renamed: never half a file
    try:
        CogVideoXPipeline.save_lora_weights(
            work, transformer_lora_layers=state, weight_name=LORA_WEIGHT_NAME
        )
        os.replace(work / LORA_WEIGHT_NAME, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {path} ({len(state)} tensors, {str(out_dtype).removeprefix('torch.')}, "
        f"{path.stat().st_size / 1e6:.1f} MB)")  # fmt: skip
    return path
