"""The one user LoRA a pipeline holds: loaded once per URL, rescaled, replaced or unloaded."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from cogvx.errors import LoraError
from cogvx.log import clip
from cogvx.lora.cache import LoraCache
from cogvx.lora.files import alpha_note, prepare_lora
from cogvx.net.urls import safe_url

Log = Callable[[str], None]

ADAPTER = "user_lora"


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
        url = self.cache.resolve(source)
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
                f"{'/'.join(map(str, ranks))}; {alpha_note(path, label)}) "
                f"in {time.monotonic() - t0:.1f}s"
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
