"""User LoRAs: resolve a source to a URL, cache the file on disk (LRU), check it, load it once.

`sources` (what a user may paste) → `cache` (download, LRU on disk) → `files` (safetensors only,
normalized to diffusers keys, checked against the transformer) → `slot` (the adapter a pipeline
holds). `sat_format` maps SAT LoRA matrices to diffusers keys.
"""

from cogvx.errors import LoraError
from cogvx.lora.cache import LoraCache
from cogvx.lora.files import (
    check_fits,
    extract_safetensors,
    normalize_lora,
    prepare_lora,
    read_lora,
)
from cogvx.lora.slot import ADAPTER, LoraSlot
from cogvx.lora.sources import HF_DEFAULT_FILE, MAX_SOURCE_CHARS, resolve_source

__all__ = [
    "ADAPTER",
    "HF_DEFAULT_FILE",
    "MAX_SOURCE_CHARS",
    "LoraCache",
    "LoraError",
    "LoraSlot",
    "check_fits",
    "extract_safetensors",
    "normalize_lora",
    "prepare_lora",
    "read_lora",
    "resolve_source",
]
