"""CogVideoX attention through diffusers' attention dispatcher, so the kernel can be chosen.

diffusers' `CogVideoXAttnProcessor2_0` calls `F.scaled_dot_product_attention` itself, so
`set_attention_backend()` has no effect on CogVideoX. `DispatchCogVideoXAttnProcessor` computes the
same thing (joint text + video attention, q/k norms, RoPE on the video tokens, output projection,
split back into text and video) with the attention call going through `dispatch_attention_fn`.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb

from cogvx.errors import SetupError
from cogvx.speed.select import BACKENDS, installed_packages, package_missing


def backend_member(backend: str) -> AttentionBackendName:
    """`backend` as diffusers' enum member; SetupError listing the allowed names otherwise."""
    if backend not in BACKENDS:
        raise SetupError(
            f"attention backend {backend!r} is not supported; use one of {list(BACKENDS)}"
        )
    return AttentionBackendName(backend)


def check_backend_usable(backend: str) -> None:
    """Raise SetupError when diffusers cannot run `backend` here (missing or too old package)."""
    from diffusers.models import attention_dispatch

    package = BACKENDS[backend_member(backend).value].package
    why_not = package and package_missing(installed_packages((package,)), package)
    if why_not:  # the rule the plan was made with (`cogvx.speed.select`)
        raise SetupError(f"attention backend {backend!r} is not usable: {package} {why_not}")

    check = getattr(attention_dispatch, "_check_attention_backend_requirements", None)
    if check is None:  # a diffusers without the (private) check: the first call will tell
        return
    try:
        check(backend_member(backend))
    except RuntimeError as e:
        raise SetupError(f"attention backend {backend!r} is not usable: {e}") from e


class DispatchCogVideoXAttnProcessor:
    """CogVideoXAttnProcessor2_0's computation with the attention call on a chosen backend.

    `backend=None` uses the dispatcher's active backend (diffusers' default, `native`). The q/k/v
    work stays in diffusers' (batch, heads, seq, head_dim) layout, so with the native backend the
    SDPA call sees the very tensors diffusers' processor passes; the dispatcher gets
    (batch, seq, heads, head_dim) views of them."""

    def __init__(self, backend: str | None = None) -> None:
        self.backend = None if backend is None else backend_member(backend)
        # diffusers' ParallelConfig when context parallelism is on (cogvx.parallel sets it)
        self._parallel_config: Any = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch, seq_len, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        query, key, value = (proj(hidden_states) for proj in (attn.to_q, attn.to_k, attn.to_v))
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (
            x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value)
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:  # video tokens only; text tokens carry no position
            query[:, :, text_len:] = apply_rotary_emb(query[:, :, text_len:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_len:] = apply_rotary_emb(key[:, :, text_len:], image_rotary_emb)

        out = dispatch_attention_fn(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self.backend,
            parallel_config=self._parallel_config,
        )
        out = out.reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        encoder_out, video_out = out.split([text_len, out.size(1) - text_len], dim=1)
        return video_out, encoder_out


def _attentions(transformer: Any) -> list[Any]:
    """The self-attention module of every CogVideoXBlock."""
    return [block.attn1 for block in transformer.transformer_blocks]


def use_dispatch_processor(transformer: Any, backend: str | None) -> int:
    """Route every block's attention through the dispatcher on `backend`; returns how many."""
    if backend is not None:
        check_backend_usable(backend)
    attentions = _attentions(transformer)
    for attn in attentions:
        attn.set_processor(DispatchCogVideoXAttnProcessor(backend))
    return len(attentions)


def restore_default_processor(transformer: Any) -> int:
    """Put diffusers' own CogVideoXAttnProcessor2_0 back on every block; returns how many."""
    attentions = _attentions(transformer)
    for attn in attentions:
        attn.set_processor(CogVideoXAttnProcessor2_0())
    return len(attentions)


def use_native_attention(transformer: Any) -> int:
    """Attention back on torch SDPA (a backend failed): diffusers' own processor, except on a
    context-parallel split, whose attention must stay on the dispatcher (it exchanges the shards'
    tokens): there the backend becomes `native` and the parallel config is kept."""
    attentions = _attentions(transformer)
    for attn in attentions:
        processor = attn.processor
        split = isinstance(processor, DispatchCogVideoXAttnProcessor) and (
            processor._parallel_config is not None
        )
        if split:
            processor.backend = backend_member("native")
        else:
            attn.set_processor(CogVideoXAttnProcessor2_0())
    return len(attentions)
