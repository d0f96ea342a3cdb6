"""How many clips to caption in one batch: the KV cache of each row against free memory."""

from __future__ import annotations

from .config import CogVLM2Config

MAX_BATCH = 16  # beyond this the batch no longer speeds decoding up on one card (compute-bound)
ROW_OVERHEAD = 1.25  # prefill activations and the vision tower's, on top of the KV cache


def kv_bytes_per_token(cfg: CogVLM2Config, dtype_bytes: int = 2) -> int:
    """Key + value cache of one token over every layer."""
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * dtype_bytes


def row_bytes(
    cfg: CogVLM2Config,
    frames: int,
    max_new_tokens: int,
    text_tokens: int = 32,
    dtype_bytes: int = 2,
) -> int:
    """Memory one clip's row needs during generation: its whole sequence's KV cache + overhead."""
    # bos, per frame its vision tokens and (chat) its ordinal as text, the prompt, the answer
    tokens = 1 + frames * (cfg.tokens_per_frame + 2) + text_tokens + max_new_tokens
    return int(tokens * kv_bytes_per_token(cfg, dtype_bytes) * ROW_OVERHEAD)


def choose_batch_size(
    free_bytes: int | None,
    cfg: CogVLM2Config,
    frames: int,
    max_new_tokens: int,
    cap: int = MAX_BATCH,
    dtype_bytes: int = 2,
) -> tuple[int, str]:
    """(batch size, reason) from the memory left after the weights (None: CPU, no GPU)."""
    if free_bytes is None:
        return min(4, cap), "CPU: batches of at most 4 clips (memory is not the limit)"
    per_row = row_bytes(cfg, frames, max_new_tokens, dtype_bytes=dtype_bytes)
    fits = max(1, free_bytes // per_row)
    size = int(min(fits, cap))
    return size, (
        f"{free_bytes / 2**30:.1f} GiB free after the weights, {per_row / 2**30:.2f} GiB per clip "
        f"({frames} frames, {max_new_tokens} new tokens): {size} clips per batch (at most {cap})"
    )
