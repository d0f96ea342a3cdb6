"""User LoRAs: resolve a source to a URL, cache the file on disk (LRU), check it, load it once.

Accepted files are safetensors only (a pickle is never opened): diffusers/peft LoRAs
(`transformer_blocks.N.attn1.to_q.lora_A.weight`, optionally `.alpha` keys or diffusers'
`lora_adapter_metadata`), raw SAT LoRA matrices, or a tarball holding one such file.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import shutil
import struct
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cogvx._fetch import (
    WeightsError,
    content_range_total,
    describe_head,
    looks_like_tar,
    open_first,
    safe_url,
)
from cogvx.log import clip
from cogvx.urls import UrlError, UrlPolicy, fetch_failed, split_url, user_url_policy

Log = Callable[[str], None]
CACHE_ENV = "COGVX_LORA_CACHE"  # folder of cached LoRA files (default <weights cache>/loras)
MIN_FREE_ENV = "COGVX_LORA_MIN_FREE_GB"  # evict cached LoRAs to keep this much disk free
MAX_BYTES_ENV = "COGVX_LORA_MAX_BYTES"  # largest LoRA file accepted
DEFAULT_MIN_FREE = 10 << 30
DEFAULT_MAX_BYTES = 2 << 30  # rank 256 on every attention layer of a 5B model is ~0.5 GB (bf16)
HF_DEFAULT_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
ADAPTER = "user_lora"
PREFERRED_IN_TAR = ("lora.safetensors", HF_DEFAULT_FILE)
STALL_TIMEOUT = 60.0
MAX_SOURCE_CHARS = 4096  # longest lora_url accepted (signed URLs run to ~2 KB)

_HF_REPO = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<file>.+))?$")
_HF_URL = re.compile(
    r"^https://huggingface\.co/(?P<repo>[\w.-]+/[\w.-]+)"
    r"(?:/(?:blob|resolve)/(?P<rev>[^/]+)/(?P<file>.+?))?/?(?:\?.*)?$"
)
_REPLICATE_URL = re.compile(
    r"^https://replicate\.com/(?P<model>[\w.-]+/[\w.-]+)(?:/versions/(?P<version>\w+))?/?$"
)
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[\w-]+)?\.weight$"
)
_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")
_STRIP_PREFIXES = ("transformer.", "base_model.model.")


class LoraError(ValueError):
    """A LoRA source, file or shape is not usable; the message names it and says why."""


# --- sources ----------------------------------------------------------------------------------


def resolve_source(source: str) -> str:
    """The download URL of a `lora_url` input (https URL, HF `owner/repo[/file]`, Replicate model).

    `owner/repo` means https://huggingface.co/owner/repo/resolve/main/<file> with file
    `pytorch_lora_weights.safetensors` unless given; replicate.com model pages become their
    `/_weights` tarball.
    """
    src = source.strip()
    if len(src) > MAX_SOURCE_CHARS:
        raise LoraError(
            f"lora_url={clip(src)!r} is {len(src)} characters; at most {MAX_SOURCE_CHARS} "
            "are accepted"
        )
    if src.startswith("http://") or src.startswith("https://"):
        try:
            split_url(src, "lora_url")
        except UrlError as e:
            raise LoraError(str(e)) from None
        if m := _HF_URL.match(src):
            file = m["file"] or HF_DEFAULT_FILE
            return f"https://huggingface.co/{m['repo']}/resolve/{m['rev'] or 'main'}/{file}"
        if m := _REPLICATE_URL.match(src):
            version = f"/versions/{m['version']}" if m["version"] else ""
            return f"https://replicate.com/{m['model']}{version}/_weights"
        return src
    if "://" not in src and (m := _HF_REPO.match(src)):
        file = m["file"] or HF_DEFAULT_FILE
        if ".." in file.split("/"):
            raise LoraError(f"lora_url={clip(src)!r}: '..' is not allowed in a file path")
        return f"https://huggingface.co/{m['repo']}/resolve/main/{file}"
    raise LoraError(
        f"lora_url={clip(safe_url(src) if '://' in src else repr(src))} is not a LoRA source; "
        "use an https URL of a .safetensors file (or of a .tar holding one), a Hugging Face "
        "repo as owner/repo or owner/repo/file.safetensors, or a replicate.com model URL"
    )


# --- the download cache -----------------------------------------------------------------------


def default_cache_dir() -> Path:
    """COGVX_LORA_CACHE, else `loras/` in the weights cache (COGVX_WEIGHTS_CACHE or ./weights)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).absolute()
    from cogvx.weights import weights_cache_root

    return weights_cache_root() / "loras"


def _env_int(name: str, default: int, scale: float = 1) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(float(value) * scale)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None


class LoraCache:
    """LoRA files on disk keyed by sha256(URL)[:16]; least recently used ones are evicted first.

    Recency is the file's mtime (touched on every hit), so the order survives restarts.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        min_free_bytes: int | None = None,
        max_bytes: int | None = None,
        free_bytes: Callable[[], int] | None = None,
        log: Log = print,
        policy: UrlPolicy | None = None,
    ):
        self.root = Path(root) if root else default_cache_dir()
        self.min_free = (
            min_free_bytes
            if min_free_bytes is not None
            else _env_int(MIN_FREE_ENV, DEFAULT_MIN_FREE, 1 << 30)
        )
        if max_bytes is None:
            max_bytes = _env_int(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)
        self.max_bytes = max_bytes
        self._free = free_bytes or (lambda: shutil.disk_usage(self.root).free)
        self.log = log
        self.policy = policy or user_url_policy("lora_url")  # which addresses URLs may reach
        self.hits = self.downloads = self.evictions = 0

    def path_for(self, url: str) -> Path:
        """Where the file for `url` lives (whether or not it is there)."""
        return self.root / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.safetensors"

    def entries(self) -> list[Path]:
        """Cached files, least recently used first."""
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)

    def fetch(self, url: str) -> Path:
        """The cached file for `url`, downloading (and evicting old entries) on a miss."""
        path = self.path_for(url)
        label = clip(safe_url(url))
        if path.is_file():
            os.utime(path)
            self.hits += 1
            self.log(f"lora: cache hit for {label}")
            return path
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial")
        try:
            t0 = time.monotonic()
            size = self._download(url, tmp, label, keep=path)
            extract_safetensors(tmp, label, self.max_bytes)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.downloads += 1
        self.log(f"lora: downloaded {label} ({size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f}s")
        return path

    def make_room(self, need: int, keep: Path | None = None) -> None:
        """Evict least recently used files until `need` bytes fit above the free-space floor."""
        for old in self.entries():
            if self._free() - need >= self.min_free:
                return
            if old == keep:
                continue
            size = old.stat().st_size
            old.unlink(missing_ok=True)
            self.evictions += 1
            self.log(f"lora: evicted {old.name} ({size / 1e6:.1f} MB) to keep disk space free")
        if self._free() < need:
            raise LoraError(
                f"not enough disk space for a {need / 1e6:.0f} MB LoRA in {self.root} "
                f"({self._free() / 1e6:.0f} MB free)"
            )

    def _download(self, url: str, dest: Path, label: str, keep: Path) -> int:
        """Fetch `url` into `dest`. Every network failure gives the same `fetch_failed` message
        (no port-scan oracle) and response bytes are never quoted."""
        failed = LoraError(fetch_failed("lora_url", url))
        try:
            _, conn, resp = open_first(
                url, self.max_bytes + 1, STALL_TIMEOUT, self.log, policy=self.policy
            )
        except WeightsError:
            raise failed from None
        try:
            if resp.status == 206:
                total = content_range_total(resp, label)
                end = int((resp.getheader("Content-Range") or "").split("-", 1)[1].split("/")[0])
                if total <= self.max_bytes and end + 1 != total:
                    raise LoraError(f"lora_url {label}: the server sent a partial range")
            else:
                length = resp.getheader("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if total is not None and total > self.max_bytes:
                raise LoraError(self._too_big(label, total))
            self.make_room(total or 0, keep=keep)
            got = 0
            with open(dest, "wb") as f:
                while chunk := _read(resp, failed):
                    got += len(chunk)
                    if got > self.max_bytes:
                        raise LoraError(self._too_big(label, got, at_least=True))
                    if total is None and got % (64 << 20) < len(chunk):
                        self.make_room(64 << 20, keep=keep)  # no size was sent: keep checking
                    f.write(chunk)
        except WeightsError:  # a bad Content-Range
            raise failed from None
        finally:
            conn.close()
        if total is not None and got != total:
            raise LoraError(f"lora_url {label}: download truncated ({got} of {total} bytes)")
        return got

    def _too_big(self, label: str, size: int, at_least: bool = False) -> str:
        return (
            f"lora_url {label}: the file is {'over ' if at_least else ''}{size / 1e6:.0f} MB; "
            f"LoRAs up to {self.max_bytes / 1e6:.0f} MB are accepted ({MAX_BYTES_ENV})"
        )


def _read(resp: http.client.HTTPResponse, failed: LoraError) -> bytes:
    """The next MiB of the body; a network error or stall raises `failed`."""
    try:
        return resp.read(1 << 20)
    except (OSError, http.client.HTTPException):
        raise failed from None


# --- file formats -----------------------------------------------------------------------------


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


def extract_safetensors(path: Path, label: str, max_bytes: int) -> None:
    """Make `path` a safetensors file: keep it, or replace a tarball by its one LoRA member."""
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
    with tarfile.open(path, "r:") as tf:
        members = [m for m in tf.getmembers() if m.isreg() and m.name.endswith(".safetensors")]
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
        src = tf.extractfile(member)
        out = path.with_name(path.name + ".member")
        try:
            with open(out, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
            os.replace(out, path)
        finally:
            out.unlink(missing_ok=True)
    with open(path, "rb") as f:
        head = f.read(512)
    if _kind(head, path.stat().st_size) != "safetensors":
        raise LoraError(
            f"lora_url {label}: {clip(member.name)} in the tarball is not a safetensors file"
        )


def read_lora(path: str | Path, label: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file (anything else raises LoraError)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    label = label or str(path)
    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise LoraError(f"LoRA {label} is not a readable safetensors file: {e}") from None


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
    return {k.removeprefix("transformer."): v for k, v in data.items()}


def normalize_lora(
    sd: dict[str, torch.Tensor], metadata: dict | None = None, label: str = "file"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """diffusers LoRA tensors with each module's alpha/r folded into lora_B (so alpha == r).

    Returns the tensors and, per new key, the file's own key (for messages). diffusers'
    CogVideoX loader drops network alphas; folding keeps the trained strength. Alpha comes from
    `.alpha` keys, else the file's LoRA metadata, else alpha = r (scale 1).
    """
    if any(".matrix_A." in k or ".matrix_B." in k for k in sd):
        from cogvx.sat_lora_format import SatConversionError, collect_lora, lora_to_diffusers

        try:
            out = lora_to_diffusers(collect_lora(sd, label), alpha=1.0, dtype=torch.float32)
        except SatConversionError as e:
            raise LoraError(str(e)) from None
        state = {f"transformer.{k}": v for k, v in out.items()}
        return state, {k: k for k in state}
    meta = _adapter_metadata(metadata or {}, label)
    pairs: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    alphas: dict[str, float] = {}
    for key in sorted(sd, key=_natural):
        if key.startswith(("text_encoder.", "te.", "lora_te")):
            raise LoraError(
                f"LoRA {label}: {key!r} is a text-encoder LoRA; CogVideoX LoRAs adapt the "
                "transformer only"
            )
        name = key
        for prefix in _STRIP_PREFIXES:
            name = name.removeprefix(prefix)
        if m := _ALPHA_KEY.match(name):
            alphas[m["module"]] = float(sd[key].float().reshape(-1)[0])
            continue
        m = _LORA_KEY.match(name)
        if not m:
            raise LoraError(
                f"LoRA {label}: key {key!r} is not a LoRA matrix (expected "
                "<module>.lora_A.weight / lora_B.weight, e.g. "
                "transformer_blocks.0.attn1.to_q.lora_A.weight)"
            )
        ab = "A" if m["kind"] in ("lora_A", "lora_down") else "B"
        pairs.setdefault(m["module"], {})[ab] = (key, sd[key])
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
                f"LoRA {label}: {have!r} has no matching lora_{'B' if 'A' in ab else 'A'}"
            )
        (ka, a), (kb, b) = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraError(
                f"LoRA {label}: {ka!r} {tuple(a.shape)} and {kb!r} {tuple(b.shape)} are not a "
                "rank-r pair [r, in] / [out, r]"
            )
        r = a.shape[0]
        if module in alphas:
            alpha = alphas[module]
        elif alpha_pattern:
            from peft.utils.other import get_pattern_key

            pattern = get_pattern_key(list(alpha_pattern), module)
            alpha = float(alpha_pattern.get(pattern, default_alpha or r))
        else:
            alpha = float(default_alpha) if default_alpha else float(r)
        scale = alpha / (math.sqrt(r) if rslora else r)
        out[f"transformer.{module}.lora_A.weight"] = a.float()
        out[f"transformer.{module}.lora_B.weight"] = b.float() * scale
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
                f"LoRA {label} does not fit {model}: {key!r} targets {module_name!r}, which "
                f"{model} does not have ({blocks} transformer blocks)"
            )
        module = getattr(module, "base_layer", module)  # a LoRA-wrapped layer (one is loaded)
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or weight is None:
            raise LoraError(
                f"LoRA {label} does not fit {model}: {key!r} targets {module_name!r}, "
                f"a {type(module).__name__}, not a linear layer"
            )
        t = state[new_key]
        out_f, in_f = weight.shape
        ok = t.shape[1] == in_f if tail.startswith("A") else t.shape[0] == out_f
        if not ok:
            want = f"[r, {in_f}]" if tail.startswith("A") else f"[{out_f}, r]"
            raise LoraError(
                f"LoRA {label} does not fit {model}: {key!r} has shape {list(t.shape)}, "
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


# --- the adapter a pipeline holds ---------------------------------------------------------------


class LoraSlot:
    """The one user LoRA a pipeline holds: loaded once per URL, rescaled, replaced or unloaded.

    No LoRA (or scale 0) runs the base weights untouched: unload and disable never fuse.
    """

    def __init__(
        self, pipe: Any, model: str, cache: LoraCache | None = None, log: Log = print
    ) -> None:
        self.pipe, self.model, self.log = pipe, model, log
        self._cache = cache
        self.url: str | None = None
        self.enabled = True
        self.loads = 0

    @property
    def cache(self) -> LoraCache:
        """The download cache (created on first use)."""
        if self._cache is None:
            self._cache = LoraCache(log=self.log)
        return self._cache

    def apply(self, source: str | None, scale: float = 1.0) -> None:
        """Make the pipeline run with `source` at `scale` (None or '' = base model)."""
        if not source or not source.strip():
            self.unload()
            return
        if not math.isfinite(scale):
            raise LoraError(f"lora_scale={scale!r} is not a finite number")
        url = resolve_source(source)
        label = clip(safe_url(url))
        if url != self.url:
            path = self.cache.fetch(url)
            t0 = time.monotonic()
            state = prepare_lora(path, self.pipe.transformer, self.model, label)
            self.unload()
            try:
                self.pipe.load_lora_weights(state, adapter_name=ADAPTER)
            except BaseException:
                self.url = None
                self._unload_quietly()
                raise
            self.url, self.enabled = url, True
            self.loads += 1
            ranks = sorted({t.shape[0] for k, t in state.items() if "lora_A" in k})
            self.log(
                f"lora: loaded {label} ({len(state) // 2} layers, rank "
                f"{'/'.join(map(str, ranks))}) in {time.monotonic() - t0:.1f}s"
            )
        else:
            self.log(f"lora: {label} is already loaded")
        if scale == 0:
            if self.enabled:
                self.pipe.disable_lora()
                self.enabled = False
            self.log("lora: lora_scale is 0, running the base model")
            return
        if not self.enabled:
            self.pipe.enable_lora()
            self.enabled = True
        self.pipe.set_adapters([ADAPTER], [float(scale)])
        self.log(f"lora: scale {scale:g}")

    def unload(self) -> None:
        """Remove the LoRA layers so the base weights run exactly as loaded."""
        if self.url is None:
            return
        self.pipe.unload_lora_weights()
        self.log(f"lora: unloaded {clip(safe_url(self.url))}")
        self.url, self.enabled = None, True

    def _unload_quietly(self) -> None:
        try:
            self.pipe.unload_lora_weights()
        except Exception as e:  # the load already failed; report that one
            self.log(f"lora: cleanup after a failed load raised {e!r}")
