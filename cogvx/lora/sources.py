"""Where a user LoRA comes from: a source (URL, Hugging Face repo, Replicate model) to one URL."""

from __future__ import annotations

import re
from collections.abc import Callable

from cogvx.errors import LoraError
from cogvx.log import clip
from cogvx.net.urls import UrlError, safe_url, split_url

Log = Callable[[str], None]

HF_DEFAULT_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes

MAX_SOURCE_CHARS = 4096  # longest lora_url accepted (signed URLs run to ~2 KB)

_HF_REPO = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<file>.+))?$")
_HF_URL = re.compile(
    r"^https://huggingface\.co/(?P<repo>[\w.-]+/[\w.-]+)"
    r"(?:/(?:blob|resolve)/(?P<rev>[^/]+)/(?P<file>.+?))?/?(?:\?.*)?$"
)
_REPLICATE_URL = re.compile(
    r"^https://replicate\.com/(?P<model>[\w.-]+/[\w.-]+)(?:/versions/(?P<version>\w+))?/?$"
)


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
