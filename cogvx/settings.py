"""Every `COGVX_*` environment variable, read here and nowhere else (a leaf: no cogvx imports).

Values are read at call time, so a test or an operator can change them between calls. Parsing
that needs domain knowledge (allowed modes, host lists) stays with the module that uses the value;
the messages name the variable. The multi-GPU ranks' socket interface (gloo's and NCCL's own
variables) is set here too: `pin_rank_sockets`.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

OFFLOAD_ENV = "COGVX_OFFLOAD"  # force a mode: none | model | sequential
# Two meanings, one per image: captioning none | int8 | nf4 (default: from free VRAM); the video
# models' transformer auto | none | int8 | fp8 (default: fp8 where the card has it, see cogvx.speed)
QUANTIZE_ENV = "COGVX_QUANTIZE"
COMPILE_ENV = "COGVX_COMPILE"  # video models: regional torch.compile 1 | 0 | auto (default auto)
ATTENTION_ENV = "COGVX_ATTENTION"  # video models: auto | off | a diffusers attention backend name
PARALLEL_ENV = "COGVX_PARALLEL"  # video models on N GPUs: ulysses=a,ring=b,cfg=c | off
PARALLEL_STALL_ENV = "COGVX_PARALLEL_STALL_S"  # N GPUs: seconds rank 0 may be silent | off
PROMPT_WEIGHTS_ENV = "COGVX_PROMPT_WEIGHTS"  # T2V/I2V: tarball URL or folder of the prompt LLM
FAST_WEIGHTS_ENV = "COGVX_FAST_WEIGHTS"  # T2V/I2V images: tarball URL or folder of `fast/`
OUTPUT_ENV = "COGVX_OUTPUT_DIR"  # per-prediction output folders live here
CACHE_ENV = "COGVX_WEIGHTS_CACHE"  # where tarballs are installed (default ./weights)
FAKE_FREE_ENV = "COGVX_FAKE_FREE_BYTES"  # tests: pretend the disk has this many free bytes
LORA_CACHE_ENV = "COGVX_LORA_CACHE"  # folder of cached LoRA files (default <weights cache>/loras)
LORA_MIN_FREE_ENV = "COGVX_LORA_MIN_FREE_GB"  # evict cached LoRAs to keep this much disk free
LORA_MAX_BYTES_ENV = "COGVX_LORA_MAX_BYTES"  # largest LoRA file accepted
ALLOW_PRIVATE_ENV = "COGVX_ALLOW_PRIVATE_URLS"  # user URLs: 1 | 0 | host[:port],...
SOURCE_DATE_ENV = "SOURCE_DATE_EPOCH"  # reproducible-builds.org: packed tarballs' member mtime
HF_ENDPOINT_ENV = "HF_ENDPOINT"  # huggingface_hub's variable: a mirror of huggingface.co
# gloo's and NCCL's own variables: the network interface of the ranks' sockets (set to loopback
# unless the user set them: every rank runs on this machine)
RANK_SOCKET_ENVS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")

# GNU tar's own variables: TAR_OPTIONS adds options to every run (an --exclude would drop
# weight files), TAPE names a default archive, POSIXLY_CORRECT changes option parsing, and
# VERSION_CONTROL / SIMPLE_BACKUP_SUFFIX set backups. None reaches the weights extractor's tar.
TAR_ENV_DROPPED = (
    "TAR_OPTIONS",
    "TAPE",
    "POSIXLY_CORRECT",
    "VERSION_CONTROL",
    "SIMPLE_BACKUP_SUFFIX",
)

DEFAULT_OUTPUT_ROOT = "/tmp/cogvx-outputs"
DEFAULT_LORA_MIN_FREE = 10 << 30
DEFAULT_LORA_MAX_BYTES = 2 << 30  # rank 256 on every attention layer of a 5B model is ~0.5 GB
DEFAULT_PARALLEL_STALL_S = 1800.0  # the process group's own timeout (cogvx.parallel.engine)


def _text(name: str) -> str:
    return os.environ.get(name, "").strip()


def _number(name: str, default: int, scale: float = 1) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(float(value) * scale)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None


def offload_mode() -> str | None:
    """COGVX_OFFLOAD as given (checked by `cogvx.gpu.plan_memory`), None when unset."""
    return os.environ.get(OFFLOAD_ENV) or None


def quantize_mode() -> str | None:
    """COGVX_QUANTIZE lower-cased (checked by the caption plan / `cogvx.speed.select`), or None."""
    return _text(QUANTIZE_ENV).lower() or None


def compile_mode() -> str | None:
    """COGVX_COMPILE lower-cased (checked by `cogvx.speed.select`), None when unset."""
    return _text(COMPILE_ENV).lower() or None


def attention_mode() -> str | None:
    """COGVX_ATTENTION lower-cased (checked by `cogvx.speed.select`), None when unset."""
    return _text(ATTENTION_ENV).lower() or None


def parallel_override() -> str:
    """COGVX_PARALLEL as given (checked by `cogvx.parallel.plan`); '' when unset (automatic)."""
    return _text(PARALLEL_ENV)


def parallel_stall_seconds() -> float | None:
    """COGVX_PARALLEL_STALL_S: how long rank 0 may send nothing while a request runs before the
    request fails as stalled (default 1800); None for `off` (wait forever)."""
    value = _text(PARALLEL_STALL_ENV)
    if not value:
        return DEFAULT_PARALLEL_STALL_S
    if value.lower() == "off":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(
            f"{PARALLEL_STALL_ENV}={value[:40]!r}: expected seconds above 0 (e.g. 1800) or off"
        )
    return seconds


def loopback_interface(names: Iterable[str]) -> str:
    """The loopback interface among the interface `names`: `lo`, else the first `lo*` (`lo0`
    on BSD and macOS), else `lo`."""
    names = list(names)
    if "lo" in names:
        return "lo"
    return next((n for n in names if n.startswith("lo")), "lo")


def rank_socket_values(environ: Mapping[str, str], interfaces: Iterable[str]) -> dict[str, str]:
    """GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME for the ranks: the user's value where one is
    set (not blank), else the loopback interface among `interfaces`."""
    loopback = loopback_interface(interfaces)
    return {name: environ.get(name, "").strip() or loopback for name in RANK_SOCKET_ENVS}


def pin_rank_sockets() -> dict[str, str]:
    """Keep gloo's and NCCL's sockets on loopback in this process (user values kept): set
    `rank_socket_values` in the environment, before the process group starts; returns them."""
    try:
        interfaces = [name for _, name in socket.if_nameindex()]
    except OSError:  # no interface list on this platform: the usual name
        interfaces = []
    values = rank_socket_values(os.environ, interfaces)
    os.environ.update(values)
    return values


def prompt_weights_source() -> str:
    """COGVX_PROMPT_WEIGHTS: a tarball URL or folder of the prompt-extension LLM; '' when unset."""
    return _text(PROMPT_WEIGHTS_ENV)


def fast_weights_source() -> str:
    """COGVX_FAST_WEIGHTS: a tarball URL or folder of Real-ESRGAN + RIFE weights; '' when unset."""
    return _text(FAST_WEIGHTS_ENV)


def output_root() -> Path:
    """Folder for prediction outputs; each prediction replaces the previous one's folder."""
    return Path(os.environ.get(OUTPUT_ENV, DEFAULT_OUTPUT_ROOT))


def weights_cache_root() -> Path:
    """Folder holding installed weight folders, one per model (and the LoRA cache)."""
    return Path(os.environ.get(CACHE_ENV, "weights")).absolute()


def source_date_epoch() -> int:
    """Every packed tarball member's mtime: SOURCE_DATE_EPOCH, or 0 when unset."""
    value = os.environ.get(SOURCE_DATE_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ValueError(f"{SOURCE_DATE_ENV}={value!r}: expected whole seconds since 1970")
    return int(value)


def fake_free_bytes() -> int | None:
    """Tests only: the free disk space to pretend (COGVX_FAKE_FREE_BYTES), None when unset."""
    fake = os.environ.get(FAKE_FREE_ENV, "").strip()
    if not fake:
        return None
    try:
        return int(fake)
    except ValueError:
        raise ValueError(f"{FAKE_FREE_ENV}={fake!r}: expected a whole number of bytes") from None


def tar_environment() -> dict[str, str]:
    """The environment for GNU tar: this process's, without `TAR_ENV_DROPPED`."""
    return {k: v for k, v in os.environ.items() if k not in TAR_ENV_DROPPED}


def lora_cache_dir() -> Path:
    """COGVX_LORA_CACHE, else `loras/` in the weights cache (COGVX_WEIGHTS_CACHE or ./weights)."""
    if os.environ.get(LORA_CACHE_ENV):
        return Path(os.environ[LORA_CACHE_ENV]).absolute()
    return weights_cache_root() / "loras"


def lora_min_free_bytes() -> int:
    """Disk space the LoRA cache keeps free by evicting (COGVX_LORA_MIN_FREE_GB, default 10)."""
    return _number(LORA_MIN_FREE_ENV, DEFAULT_LORA_MIN_FREE, 1 << 30)


def lora_max_bytes() -> int:
    """Largest LoRA file accepted (COGVX_LORA_MAX_BYTES, default 2 GiB)."""
    return _number(LORA_MAX_BYTES_ENV, DEFAULT_LORA_MAX_BYTES)


def allow_private_urls() -> str:
    """COGVX_ALLOW_PRIVATE_URLS as given (parsed by `cogvx.net.urls.user_url_policy`)."""
    return _text(ALLOW_PRIVATE_ENV)


def hf_endpoint() -> str:
    """HF_ENDPOINT (huggingface_hub's variable for a mirror), default https://huggingface.co."""
    return _text(HF_ENDPOINT_ENV) or "https://huggingface.co"
