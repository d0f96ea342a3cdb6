"""The one reader of tensor files: safetensors, or torch pickles loaded with weights_only=True.

Every weights file the package opens goes through here (Real-ESRGAN, RIFE, VEnhancer, CogVLM2
shards, user LoRAs); errors are `WeightsFileError`s (or the caller's subclass) naming the file.
A pickle is never unpickled with code: `weights_only=True` always.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from cogvx.errors import StateDictError, WeightsFileError

STATE_DICT_SUFFIXES = (".pth", ".pt", ".pkl", ".bin", ".ckpt", ".safetensors")
# Containers training scripts wrap a state dict in, unwrapped in this order.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict")


def read_tensor_file(path: str | os.PathLike) -> Any:
    """Raw contents of a .safetensors file or a torch pickle loaded with weights_only=True.

    Pickles are memory-mapped when their format allows (a multi-GB checkpoint is paged in, not
    copied); `load_state_dict` unwraps containers and words the errors.
    """
    import torch

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def load_state_dict(
    path: str | os.PathLike,
    *,
    what: str = "weights file",
    error: type[WeightsFileError] = StateDictError,
    suffixes: tuple[str, ...] = STATE_DICT_SUFFIXES,
) -> dict[str, Any]:
    """A flat state dict of CPU tensors from `path`; `error` names `what` and the file.

    Unwraps the usual containers (`WRAPPER_KEYS`) and strips a DataParallel "module." prefix.
    """

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise error(f"{what} {path}: suffix {suffix!r} is not one of {suffixes}")
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        loaded = read_tensor_file(path)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, a pickle with code in it...
        first = str(e).splitlines()[0] if str(e) else ""
        raise error(
            f"{what} {path} could not be read as a state dict of tensors"
            f" ({type(e).__name__}: {first})"
        ) from e
    return plain_state_dict(loaded, path, what=what, error=error)


def plain_state_dict(
    loaded: object,
    source: str | os.PathLike,
    *,
    what: str = "weights file",
    error: type[WeightsFileError] = StateDictError,
) -> dict[str, Any]:
    """Unwrap a container dict and drop a DataParallel "module." prefix; tensors only."""
    import torch

    if not isinstance(loaded, Mapping):
        raise error(f"{what} {source} holds a {type(loaded).__name__}, not a dict")
    for key in WRAPPER_KEYS:
        if isinstance(loaded.get(key), Mapping):
            loaded = cast(Mapping[Any, Any], loaded[key])
            break
    out: dict[str, Any] = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise error(f"{what} {source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[str(key).removeprefix("module.")] = value
    if not out:
        raise error(f"{what} {source} holds no tensors")
    return out


def iter_safetensors(
    path: str | os.PathLike, device: str = "cpu", error: type[WeightsFileError] = WeightsFileError
) -> Iterator[tuple[str, Any]]:
    """(key, tensor) of one safetensors file, one tensor at a time, on `device`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:  # corrupt, truncated...
        if isinstance(exc, WeightsFileError):
            raise
        raise error(f"{path}: cannot read safetensors ({exc})") from exc


def read_safetensors(
    path: str | os.PathLike, label: str | None = None, error: type[Exception] = WeightsFileError
) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors (on CPU) and the string metadata of one safetensors file.

    A user file (a LoRA) passes its own label and error class (an input error, not a setup one).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{label or path} is not a readable safetensors file: {e}") from None


def safetensors_header(
    path: str | os.PathLike, label: str | None = None, error: type[Exception] = WeightsFileError
) -> tuple[list[str], dict[str, str]]:
    """Tensor names and string metadata of one safetensors file, without reading any tensor."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{label or path} is not a readable safetensors file: {e}") from None
