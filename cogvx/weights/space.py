"""Free-space checks for weight installs: up front (size known) and per chunk (the floor)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from cogvx import settings
from cogvx.errors import WeightsError
from cogvx.weights.tarcheck import TarChecker

SPACE_MARGIN = 64 << 20  # free space kept on top of 1.05 x the tarball


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem of `path` (COGVX_FAKE_FREE_BYTES overrides, for tests)."""
    fake = settings.fake_free_bytes()
    if fake is not None:
        return fake
    return shutil.disk_usage(path).free


def check_space(total: int, where: Path, label: str) -> None:
    """Raise unless `where` has room for a `total`-byte tarball (1.05 x + SPACE_MARGIN)."""
    need = int(total * 1.05) + SPACE_MARGIN
    free = free_bytes(where)
    if need > free:
        raise WeightsError(
            f"not enough disk space to install {label} into {where}: "
            f"{need / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free"
        )


def check_floor(where: Path, label: str, done: int) -> None:
    """Raise when less than SPACE_MARGIN is free after `done` bytes were written."""
    free = free_bytes(where)
    if free < SPACE_MARGIN:
        raise WeightsError(
            f"not enough disk space to install {label} into {where}: stopped after "
            f"{done / 1e6:.0f} MB with {free / 1e6:.0f} MB free "
            f"({SPACE_MARGIN >> 20} MB are kept free)"
        )


def space_guard(where: Path, label: str, checked: bool) -> Callable[[TarChecker], None]:
    """Per chunk: check the manifest's total once (when no size was known), keep the floor free."""
    state = {"checked": checked}

    def guard(checker: TarChecker) -> None:
        if not state["checked"] and checker.manifest is not None:
            state["checked"] = True
            files = checker.manifest["files"].values()
            check_space(sum(info["size"] for info in files), where, label)
        check_floor(where, label, checker.offset)

    return guard
