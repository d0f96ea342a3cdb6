"""SAT (SwissArmyTransformer) CogVideoX checkpoints: loading, then writing a diffusers model folder.

The tools `convert_weight_sat2hf.py` and `export_sat_lora_weight.py` are thin CLIs over
`cogvx.convert`: this module (load, split, write), `sat_layout` (which model a checkpoint is),
`sat_keys` (the transformer key map), `sat_vae`, `sat_lora` and `sat_pipeline`.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch

from cogvx.convert.sat_keys import Planned
from cogvx.lora.sat_format import SAT_PREFIX, SatConversionError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Log = Callable[[str], None]


def resolve_checkpoint(path: str | Path) -> Path:
    """The .pt file for `path`: a file, or a SAT save folder (`latest` + `<iter>/mp_rank_00_*`)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        latest = p / "latest"
        candidates = [p / "mp_rank_00_model_states.pt"]
        if latest.is_file():
            candidates.insert(0, p / latest.read_text().strip() / "mp_rank_00_model_states.pt")
        for c in candidates:
            if c.is_file():
                return c
        raise SatConversionError(
            f"{p} is a folder without a SAT checkpoint: expected a 'latest' file naming an "
            "iteration folder, or mp_rank_00_model_states.pt inside it"
        )
    raise SatConversionError(f"{p}: no such file")


def load_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a SAT/PyTorch checkpoint memory-mapped and return its flat tensor dict.

    Unwraps `{"module": ...}`, `{"model": ...}` and `{"state_dict": ...}` like SAT and DeepSpeed
    write them. `trust_pickle` allows arbitrary pickled objects (only for files you trust).
    """
    p = resolve_checkpoint(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        magic = f.read(4)
    zipped = magic == b"PK\x03\x04"
    if not zipped and magic[:1] != b"\x80":
        raise SatConversionError(
            f"{p} is not a PyTorch checkpoint (starts with {magic!r}); SAT saves torch .pt files "
            "such as mp_rank_00_model_states.pt"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=not trust_pickle, mmap=zipped)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1][:300]
        raise SatConversionError(
            f"{p} holds pickled Python objects that safe loading refuses ({first}). If you trust "
            "the file, pass --trust-pickle"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise SatConversionError(
            f"{p} ({size} bytes) cannot be read: the file is truncated or corrupt ({e})"
        ) from e
    for key in ("module", "model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise SatConversionError(f"{p} holds no state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise SatConversionError(f"{p}: entries that are not tensors: {bad[:10]}")
    return obj


def split_sat_model(
    sd: dict[str, torch.Tensor], path: str | Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Split a SAT model state dict into (transformer keys without prefix, VAE keys, skipped).

    `first_stage_model.*` is the VAE; `conditioner.*` (T5) is skipped (the text encoder comes from
    a diffusers folder). Any other top-level name is an error naming the first such keys.
    """
    dit, vae, skipped, unknown = {}, {}, [], []
    for k, v in sd.items():
        if k.startswith(SAT_PREFIX):
            dit[k[len(SAT_PREFIX) :]] = v
        elif k.startswith("first_stage_model."):
            vae[k[len("first_stage_model.") :]] = v
        elif k.startswith("conditioner."):
            skipped.append(k)
        else:
            unknown.append(k)
    if not dit:
        hint = ""
        if any(k.startswith(("encoder.", "decoder.")) for k in sd):
            hint = " It looks like a SAT VAE checkpoint: pass it with --vae."
        raise SatConversionError(
            f"{path} is not a SAT CogVideoX transformer checkpoint: no key starts with "
            f"'{SAT_PREFIX}' (first keys: {list(sd)[:5]}).{hint}"
        )
    if unknown:
        raise SatConversionError(
            f"{path}: unexpected keys outside {SAT_PREFIX!r}: {unknown[:10]}"
            + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else "")
        )
    return dit, vae, skipped


def parse_size(text: str | int) -> int:
    """Bytes from '5GB', '500MB', '2GiB' or an int."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"shard size {text!r} is not a size like '5GB' or '500MB'")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** "_KMGT".index(m.group(2).upper() or "_"))


def check_plan(
    plan: dict[str, Planned], expected: dict[str, tuple[int, ...]], what: str, path: str | Path
) -> None:
    """Strict load: every expected key planned with its shape, nothing extra."""
    missing = [k for k in expected if k not in plan]
    extra = [k for k in plan if k not in expected]
    shapes = [
        f"{k}: checkpoint {plan[k].shape} vs model {expected[k]}"
        for k in expected
        if k in plan and tuple(plan[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} {what} tensors: {missing[:10]}")
    if extra:
        problems.append(f"{len(extra)} unexpected: {extra[:10]}")
    if shapes:
        problems.append(f"shape mismatches: {shapes[:10]}")
    if problems:
        raise SatConversionError(f"{path}: cannot load the {what} strictly; " + "; ".join(problems))


def write_model_folder(
    out_dir: str | Path,
    model_cls: type,
    config: dict,
    plan: dict[str, Planned],
    dtype: torch.dtype,
    max_shard_size: str | int = "5GB",
    source: str | Path = "checkpoint",
    log: Log = print,
) -> Path:
    """Check `plan` strictly against `model_cls(**config)` and write config + safetensors shards.

    Tensors are made shard by shard, so peak memory is about one shard, not the whole model.
    """
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    with init_empty_weights():
        model = model_cls(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_plan(plan, expected, model_cls.__name__, source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / model.config_name, model.to_json_string())
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    size = 0
    for k, shape in expected.items():
        nbytes = dtype.itemsize * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes
    n = len(shards)
    stem = "diffusion_pytorch_model"
    weight_map, total = {}, 0
    for i, keys in enumerate(shards, 1):
        name = f"{stem}.safetensors" if n == 1 else f"{stem}-{i:05d}-of-{n:05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for k in keys:
            t = plan[k].make()
            if tuple(t.shape) != expected[k]:
                raise SatConversionError(
                    f"{source}: {k} comes out of the checkpoint as {tuple(t.shape)}, but "
                    f"{model_cls.__name__} expects {expected[k]}"
                )
            tensors[k] = t.to(dtype).contiguous()
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        with atomic_path(out / name) as tmp:
            save_file(tensors, tmp, metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(keys, name))
        log(f"  wrote {out.name}/{name} ({len(keys)} tensors)")
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_text_atomic(
            out / f"{stem}.safetensors.index.json", json.dumps(index, indent=2) + "\n"
        )
    return out


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; os.replace'd onto `path` when the block succeeds.

    Readers see the old file or the whole new one, never a half-written file; a failed block
    removes the temporary file.
    """
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def dtype_from_flags(dtype: str | None, fp16: bool = False, bf16: bool = False) -> str | None:
    """Resolve --dtype/--fp16/--bf16; ValueError when they conflict."""
    picked = {d for d, on in (("fp16", fp16), ("bf16", bf16)) if on}
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"--dtype {dtype!r} is not allowed; choose one of {sorted(DTYPES)}")
        picked.add(dtype)
    if len(picked) > 1:
        raise ValueError(
            f"conflicting dtype flags: {sorted(picked)}; pass only one of --dtype/--fp16/--bf16"
        )
    return picked.pop() if picked else None


def source_dtype(tensors: Iterable[torch.Tensor]) -> torch.dtype:
    """The most common floating dtype among `tensors`."""
    counts: dict[torch.dtype, int] = {}
    for t in tensors:
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    by_count = cast("Callable[[torch.dtype], int]", counts.get)  # keys of counts: never None
    return max(counts, key=by_count) if counts else torch.float32
