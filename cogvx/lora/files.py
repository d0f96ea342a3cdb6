"""LoRA files: safetensors only (a pickle is never opened), normalized to diffusers keys, checked.

Accepted files: diffusers/peft LoRAs (`transformer_blocks.N.attn1.to_q.lora_A.weight`, optionally
`.alpha` keys or diffusers' `lora_adapter_metadata`), raw SAT LoRA matrices, or a tarball
holding one such file.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import torch

from cogvx.checks import shown
from cogvx.errors import LoraError
from cogvx.log import clip
from cogvx.lora.sources import HF_DEFAULT_FILE
from cogvx.weights.tarcheck import describe_head, looks_like_tar
from cogvx.weights.tensors import read_safetensors, safetensors_header

Log = Callable[[str], None]

PREFERRED_IN_TAR = ("lora.safetensors", HF_DEFAULT_FILE)
MAX_TAR_MEMBERS = 64  # headers read from a LoRA tarball at most (it holds a few files)

_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[\w-]+)?\.weight$"
)
_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_STRIP_PREFIXES = ("transformer.", "base_model.model.")


def _kind(head: bytes, size: int) -> str:
    """'safetensors', 'tar', 'pickle' or 'unknown' from a file's first bytes."""
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if looks_like_tar(head):
        return "tar"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def extract_safetensors(
    path: Path, label: str, max_bytes: int, *, room: Callable[[int], None] | None = None
) -> None:
    """Make `path` a safetensors file: keep it, or replace a tarball by its one LoRA member.

    `room(size)` runs before the member is written next to the tarball (it raises when the
    disk cannot hold `size` more bytes). Tarballs of more than MAX_TAR_MEMBERS are refused.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    kind = _kind(head, size)
    if kind == "safetensors":
        return
    if kind == "pickle":
        raise LoraError(
            f"lora_url {label} is a pickled PyTorch checkpoint (.pt/.bin/.ckpt); pickles are "
            "never opened here: convert it to .safetensors (safetensors.torch.save_file)"
        )
    if kind != "tar":
        raise LoraError(
            f"lora_url {label} is not a safetensors file ({describe_head(head)}); "
            "send a .safetensors LoRA or a .tar holding one"
        )
    try:
        with tarfile.open(path, "r:") as tf:
            member = _tar_member(tf, label, max_bytes)
            if room is not None:
                room(member.size)
            src = tf.extractfile(member)
            assert src is not None  # members are regular files (isreg)
            out = path.with_name(path.name + ".member")
            try:
                with open(out, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
                os.replace(out, path)
            finally:
                out.unlink(missing_ok=True)
    except tarfile.TarError:
        raise LoraError(f"lora_url {label}: the tarball is corrupt or truncated") from None
    with open(path, "rb") as f:
        head = f.read(512)
    if _kind(head, path.stat().st_size) != "safetensors":
        raise LoraError(
            f"lora_url {label}: {clip(member.name)} in the tarball is not a safetensors file"
        )


def _tar_member(tf: tarfile.TarFile, label: str, max_bytes: int) -> tarfile.TarInfo:
    """The tarball's one LoRA member, reading at most MAX_TAR_MEMBERS headers."""
    members = []
    for i, m in enumerate(tf):
        if i >= MAX_TAR_MEMBERS:
            raise LoraError(
                f"lora_url {label}: the tarball holds over {MAX_TAR_MEMBERS} members; at most "
                f"{MAX_TAR_MEMBERS} are allowed (a LoRA tarball holds a few files)"
            )
        if m.issparse():
            raise LoraError(
                f"lora_url {label}: {clip(m.name)} in the tarball is a sparse file; "
                "sparse members are not supported"
            )
        if m.isreg() and m.name.endswith(".safetensors"):
            members.append(m)
    if not members:
        raise LoraError(f"lora_url {label}: the tarball holds no .safetensors file")
    if len(members) > 1:
        preferred = [m for m in members if Path(m.name).name in PREFERRED_IN_TAR]
        if len(preferred) != 1:
            names = clip(str([m.name for m in members]))
            raise LoraError(
                f"lora_url {label}: the tarball holds several .safetensors files {names}; "
                f"expected one (or one named {' or '.join(PREFERRED_IN_TAR)})"
            )
        members = preferred
    member = members[0]
    if member.size > max_bytes:
        raise LoraError(
            f"lora_url {label}: {clip(member.name)} is {member.size / 1e6:.0f} MB, over the "
            f"{max_bytes / 1e6:.0f} MB limit"
        )
    return member


def read_lora(path: str | Path, label: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file (anything else raises LoraError)."""
    return read_safetensors(path, f"LoRA {label or path}", LoraError)


def _q(value: object) -> str:
    """A key or name from the file, quoted and clipped for a message (keys may be megabytes)."""
    return shown(value, 120)


def _alpha(value: object, label: str, what: str) -> float:
    """A LoRA alpha from the file as a finite float, or LoraError naming where it came from."""
    try:
        alpha = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LoraError(f"LoRA {label}: {what} {_q(value)} is not a number") from None
    if not math.isfinite(alpha):
        raise LoraError(f"LoRA {label}: {what} is {alpha}; it must be a finite number")
    return alpha


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _adapter_metadata(metadata: dict, label: str) -> dict:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise LoraError(f"LoRA {label}: unreadable lora_adapter_metadata") from None
    if not isinstance(data, dict):
        raise LoraError(f"LoRA {label}: lora_adapter_metadata is not a JSON object")
    meta = {k.removeprefix("transformer."): v for k, v in data.items()}
    if not isinstance(meta.get("alpha_pattern") or {}, dict):
        raise LoraError(f"LoRA {label}: alpha_pattern in lora_adapter_metadata is not an object")
    return meta


def normalize_lora(
    sd: dict[str, torch.Tensor], metadata: dict | None = None, label: str = "file"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """diffusers LoRA tensors with each module's alpha/r folded into lora_B (so alpha == r).

    Returns the tensors and, per new key, the file's own key (for messages). diffusers'
    CogVideoX loader drops network alphas; folding keeps the trained strength. Alpha comes from
    `.alpha` keys, else the file's LoRA metadata, else alpha = r (scale 1).
    """
    if any(".matrix_A." in k or ".matrix_B." in k for k in sd):
        from cogvx.lora.sat_format import SatConversionError, collect_lora, lora_to_diffusers

        try:
            out = lora_to_diffusers(collect_lora(sd, label), alpha=1.0, dtype=torch.float32)
        except SatConversionError as e:
            raise LoraError(str(e)) from None
        state = {f"transformer.{k}": v for k, v in out.items()}
        for k, t in state.items():
            if not torch.isfinite(t).all():
                raise LoraError(f"LoRA {label}: {_q(k)} holds NaN or infinite values")
        return state, {k: k for k in state}
    meta = _adapter_metadata(metadata or {}, label)
    pairs: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    alphas: dict[str, float] = {}
    kohya = next((k for k in sd if k.startswith(KOHYA_PREFIXES)), None)
    if kohya is not None:
        raise LoraError(
            f"LoRA {label} is a Kohya-format LoRA ({_q(kohya)}: lora_unet_* / lora_te_* keys); "
            "diffusers has no Kohya converter for CogVideoX, so it cannot be loaded. Use a "
            "diffusers/peft LoRA (transformer_blocks.N.attn1.to_q.lora_A.weight ...), as "
            "diffusers' and THUDM's CogVideoX trainers save"
        )
    for key in sorted(sd, key=_natural):
        if key.startswith(("text_encoder.", "te.", "lora_te")):
            raise LoraError(
                f"LoRA {label}: {_q(key)} is a text-encoder LoRA; CogVideoX LoRAs adapt the "
                "transformer only"
            )
        name = key
        for prefix in _STRIP_PREFIXES:
            name = name.removeprefix(prefix)
        if m := _ALPHA_KEY.match(name):
            if sd[key].numel() != 1:
                raise LoraError(
                    f"LoRA {label}: {_q(key)} holds {sd[key].numel()} values; an alpha is one"
                )
            alphas[m["module"]] = _alpha(sd[key].float().item(), label, _q(key))
            continue
        m = _LORA_KEY.match(name)
        if not m:
            raise LoraError(
                f"LoRA {label}: key {_q(key)} is not a LoRA matrix (expected "
                "<module>.lora_A.weight / lora_B.weight, e.g. "
                "transformer_blocks.0.attn1.to_q.lora_A.weight)"
            )
        side = "A" if m["kind"] in ("lora_A", "lora_down") else "B"
        pairs.setdefault(m["module"], {})[side] = (key, sd[key])
    if not pairs:
        raise LoraError(f"LoRA {label} holds no LoRA matrices")
    rslora = bool(meta.get("use_rslora"))
    default_alpha = meta.get("lora_alpha")
    alpha_pattern = meta.get("alpha_pattern") or {}
    out, origin = {}, {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            have = next(iter(ab.values()))[0]
            raise LoraError(
                f"LoRA {label}: {_q(have)} has no matching lora_{'B' if 'A' in ab else 'A'}"
            )
        (ka, a), (kb, b) = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraError(
                f"LoRA {label}: {_q(ka)} {tuple(a.shape)} and {_q(kb)} {tuple(b.shape)} are not a "
                "rank-r pair [r, in] / [out, r]"
            )
        r = a.shape[0]
        if r == 0:
            raise LoraError(f"LoRA {label}: {_q(ka)} has rank 0 (shape {tuple(a.shape)})")
        if module in alphas:
            alpha = alphas[module]
        elif alpha_pattern:
            from peft.utils.other import get_pattern_key

            pattern = get_pattern_key(list(alpha_pattern), module)
            value = alpha_pattern.get(pattern, default_alpha or r)
            alpha = _alpha(value, label, f"alpha_pattern's alpha for {_q(module)}")
        else:
            alpha = _alpha(default_alpha, label, "lora_alpha") if default_alpha else float(r)
        scale = alpha / (math.sqrt(r) if rslora else r)
        a, b = a.float(), b.float() * scale
        for k, t in ((ka, a), (kb, b)):
            if not torch.isfinite(t).all():  # NaN/inf: a black video reported as a success
                raise LoraError(f"LoRA {label}: {_q(k)} holds NaN or infinite values")
        out[f"transformer.{module}.lora_A.weight"] = a
        out[f"transformer.{module}.lora_B.weight"] = b
        origin[f"transformer.{module}.lora_A.weight"] = ka
        origin[f"transformer.{module}.lora_B.weight"] = kb
    return out, origin


def check_fits(
    state: dict[str, torch.Tensor],
    transformer: torch.nn.Module,
    model: str,
    label: str,
    origin: dict[str, str] | None = None,
) -> None:
    """Raise LoraError naming the first key whose module is missing or whose shape is wrong."""
    modules = dict(transformer.named_modules())
    blocks = sum(1 for n in modules if re.fullmatch(r"transformer_blocks\.\d+", n))
    for new_key in sorted(state, key=_natural):
        key = (origin or {}).get(new_key, new_key)
        name = new_key.removeprefix("transformer.")
        module_name, _, tail = name.rpartition(".lora_")
        module = modules.get(module_name)
        if module is None:
            raise LoraError(
                f"LoRA {label} does not fit {model}: {_q(key)} targets {_q(module_name)}, which "
                f"{model} does not have ({blocks} transformer blocks)"
            )
        module = getattr(module, "base_layer", module)  # a LoRA-wrapped layer (one is loaded)
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or weight is None:
            raise LoraError(
                f"LoRA {label} does not fit {model}: {_q(key)} targets {_q(module_name)}, "
                f"a {type(module).__name__}, not a linear layer"
            )
        t = state[new_key]
        out_f, in_f = weight.shape
        ok = t.shape[1] == in_f if tail.startswith("A") else t.shape[0] == out_f
        if not ok:
            want = f"[r, {in_f}]" if tail.startswith("A") else f"[{out_f}, r]"
            raise LoraError(
                f"LoRA {label} does not fit {model}: {_q(key)} has shape {list(t.shape)}, "
                f"{module_name} needs {want} (a LoRA trained for another model?)"
            )


def prepare_lora(
    path: str | Path, transformer: torch.nn.Module, model: str, label: str
) -> dict[str, torch.Tensor]:
    """Read, normalize (alpha folded), check against `transformer` and cast to its dtype."""
    sd, metadata = read_lora(path, label)
    state, origin = normalize_lora(sd, metadata, label)
    check_fits(state, transformer, model, label, origin)
    dtype = next(transformer.parameters()).dtype
    return {k: v.to(dtype).contiguous() for k, v in state.items()}


def alpha_note(path: str | Path, label: str) -> str:
    """How the LoRA's strength at lora_scale 1 was set, for the load log line (header only)."""
    keys, metadata = safetensors_header(path, f"LoRA {label}", LoraError)
    if any(".matrix_A." in k for k in keys):
        return "SAT matrices, scale as exported"
    stored = any(_ALPHA_KEY.match(k) for k in keys)
    if stored or "lora_alpha" in _adapter_metadata(metadata, label):
        return "alpha/rank from the file"
    return "no alpha stored: alpha = rank (scale 1), as diffusers loads it"
