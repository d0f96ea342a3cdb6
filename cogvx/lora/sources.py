"""Where a user LoRA comes from: a source (URL, Hugging Face repo, Replicate model) to one URL."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from cogvx import settings
from cogvx.errors import LoraError
from cogvx.log import clip
from cogvx.net.urls import UrlError, safe_url, split_url

Log = Callable[[str], None]

HF_DEFAULT_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes

MAX_SOURCE_CHARS = 4096  # longest lora_url accepted (signed URLs run to ~2 KB)

_HF_REPO = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<file>.+))?$")
_HF_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
_HF_URL = re.compile(
    r"^https://(?:www\.)?(?:huggingface|hf)\.co/(?P<repo>[\w.-]+/[\w.-]+)"
    r"(?:/(?:blob|resolve)/(?P<rev>[^/]+)/(?P<file>.+?)|/tree/(?P<tree>[^/?]+)/?)?/?(?:\?.*)?$"
)
_REPLICATE_URL = re.compile(
    r"^https://(?:www\.)?replicate\.com/(?P<model>[\w.-]+/[\w.-]+)"
    r"(?:/versions/(?P<version>\w+))?/?$"
)
_CIVITAI_PAGE = re.compile(
    r"^https://(?:www\.)?civitai\.com/models/(?P<id>\d+)(?:/[^?]*)?(?:\?(?P<query>.*))?$"
)
_SCHEMELESS_HOSTS = (*_HF_HOSTS, "replicate.com", "www.replicate.com", "civitai.com")
ACCEPTED_FORMS = (
    "an https URL of a .safetensors file (or of a .tar holding one); a Hugging Face repo as "
    "owner/repo, owner/repo/file.safetensors or its huggingface.co page "
    "(.../blob/<rev>/<file> and .../resolve/<rev>/<file> too); a replicate.com model URL; or a "
    "civitai.com download link (a model page with ?modelVersionId=N)"
)


@dataclass(frozen=True)
class Source:
    """A parsed `lora_url`: a download URL, or a Hugging Face repo whose file must be found."""

    url: str  # the download URL (for a repo without a file: its default file)
    repo: str | None = None  # set when no file was named: look the repo's files up
    rev: str = "main"


def hf_endpoint() -> str:
    """The Hugging Face base URL (HF_ENDPOINT, as huggingface_hub reads it)."""
    return settings.hf_endpoint().rstrip("/")


def parse_source(source: str) -> Source:
    """Parse a `lora_url` input; LoraError names the accepted forms for anything else."""
    src = source.strip()
    if len(src) > MAX_SOURCE_CHARS:
        raise LoraError(
            f"lora_url={safe_url(src)} is {len(src)} characters; at most {MAX_SOURCE_CHARS} "
            "are accepted"  # safe_url: no query (a signed URL's token), fragment or credentials
        )
    if "://" not in src and src.split("/", 1)[0].lower() in _SCHEMELESS_HOSTS:
        src = "https://" + src  # huggingface.co/o/r, replicate.com/o/m pasted without a scheme
    if src.startswith("http://") or src.startswith("https://"):
        try:
            split_url(src, "lora_url")
        except UrlError as e:
            raise LoraError(str(e)) from None
        if m := _HF_URL.match(src):
            if m["file"]:
                return Source(f"{hf_endpoint()}/{m['repo']}/resolve/{m['rev']}/{m['file']}")
            return _repo(m["repo"], m["tree"] or "main")
        host = src.split("/", 3)[2].lower()
        if host in _HF_HOSTS:
            raise LoraError(_refusal(src, "is a Hugging Face page that is not a repo or a file"))
        if m := _REPLICATE_URL.match(src):
            version = f"/versions/{m['version']}" if m["version"] else ""
            return Source(f"https://replicate.com/{m['model']}{version}/_weights")
        if m := _CIVITAI_PAGE.match(src):
            found = re.search(r"(?:^|&)modelVersionId=(\d+)", m["query"] or "")
            if not found:
                raise LoraError(
                    _refusal(src, "is a civitai.com model page, not a file: add its "
                             "?modelVersionId=N or use the model's download link")
                )  # fmt: skip
            return Source(f"https://civitai.com/api/download/models/{found[1]}")
        return Source(src)
    if "://" not in src and (m := _HF_REPO.match(src)):
        if m["file"] and ".." in m["file"].split("/"):
            raise LoraError(f"lora_url={clip(repr(src))}: '..' is not allowed in a file path")
        if m["file"]:
            return Source(f"{hf_endpoint()}/{m['repo']}/resolve/main/{m['file']}")
        return _repo(m["repo"], "main")
    raise LoraError(_refusal(src, "is not a LoRA source"))


def _repo(repo: str, rev: str) -> Source:
    return Source(f"{hf_endpoint()}/{repo}/resolve/{rev}/{HF_DEFAULT_FILE}", repo=repo, rev=rev)


def _refusal(src: str, why: str) -> str:
    shown = safe_url(src) if "://" in src else repr(src)
    return f"lora_url={clip(shown)} {why}; use {ACCEPTED_FORMS}"


def resolve_source(source: str) -> str:
    """The download URL of a `lora_url` input (see `parse_source`; a repo without a file gives
    its `pytorch_lora_weights.safetensors`, which `LoraCache.find_repo_file` may replace)."""
    return parse_source(source).url


def pick_repo_file(files: list[str], repo: str) -> str:
    """The LoRA file of a repo listing: diffusers' default name, else its one .safetensors."""
    if HF_DEFAULT_FILE in files:
        return HF_DEFAULT_FILE
    found = sorted(f for f in files if f.endswith(".safetensors"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise LoraError(f"lora_url {repo}: the Hugging Face repo holds no .safetensors file")
    raise LoraError(
        f"lora_url {repo}: the repo holds {len(found)} .safetensors files "
        f"({', '.join(clip(f, 60) for f in found[:5])}{', ...' if len(found) > 5 else ''}); "
        "name one as owner/repo/file.safetensors"
    )
