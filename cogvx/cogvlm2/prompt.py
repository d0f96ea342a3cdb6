"""Prompt layout of CogVLM2-Caption: token ids, token types and the position-id rule."""

from __future__ import annotations

import torch

LANGUAGE = 0
VISION = 1
TEMPLATES = ("chat", "base")


def prompt_text(query: str, template: str) -> str:
    """The text that follows the frames: 'Question: q Answer:' for chat, q itself for base."""
    check_template(template)
    if template == "chat":
        return f"Question: {query} Answer:"
    return query


def check_template(template: str) -> None:
    """Raise ValueError unless `template` is one of TEMPLATES."""
    if template not in TEMPLATES:
        raise ValueError(f"template: {template!r} is not one of {list(TEMPLATES)}")


def build_inputs(
    tokenizer,
    query: str,
    num_frames: int,
    template: str,
    tokens_per_frame: int,
    placeholder_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (input_ids, token_type_ids), both int64 of shape (L,).

    Layout: bos, then per frame `tokens_per_frame` placeholders (type VISION; chat adds the frame's
    ordinal as text after each frame), then the prompt text. No eos.
    """
    check_template(template)
    if not isinstance(query, str):
        raise ValueError(f"prompt: expected a string, got {type(query).__name__}")
    if num_frames < 0:
        raise ValueError(f"num_frames: {num_frames} is negative")
    ids = [tokenizer.bos_token_id]
    types = [LANGUAGE]
    for t in range(num_frames):
        ids += [placeholder_id] * tokens_per_frame
        types += [VISION] * tokens_per_frame
        if template == "chat":
            ordinal = tokenizer.encode(str(t), add_special_tokens=False)
            ids += ordinal
            types += [LANGUAGE] * len(ordinal)
    text_ids = tokenizer.encode(prompt_text(query, template), add_special_tokens=False)
    ids += text_ids
    types += [LANGUAGE] * len(text_ids)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(types, dtype=torch.long)


def build_position_ids(
    token_type_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Position ids where every run of vision tokens between its boi and eoi shares one position.

    The first and last token of each vision run (boi/eoi) count as text; each text token and the
    first inner token of a run advance the position by one. Works on (L,) or (B, L).
    """
    tt = token_type_ids.clone()
    if attention_mask is not None:
        tt[~attention_mask.bool()] = -1
    is_vision = tt == VISION
    is_text = tt == LANGUAGE
    edge = torch.ones_like(is_vision[..., :1])
    left_text = torch.cat([edge, is_text[..., :-1]], dim=-1)
    right_text = torch.cat([is_text[..., 1:], edge], dim=-1)
    tt[is_vision & (left_text | right_text)] = LANGUAGE
    is_text = tt == LANGUAGE
    run_start = (tt[..., 1:] == VISION) & is_text[..., :-1]
    step = torch.zeros_like(tt)
    step[..., 1:] = (is_text[..., 1:] | run_start).long()
    return step.cumsum(dim=-1)
