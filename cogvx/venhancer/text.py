"""Text conditioning: OpenCLIP ViT-H-14's text tower at its penultimate layer, via transformers.

The original runs open_clip (laion2b_s32b_b79k): 77 tokens zero-padded, causal mask only, all
blocks but the last, then ln_final. Stable Diffusion 2's `text_encoder` is that tower converted to
CLIPTextModel with the last block removed (23 layers), and its tokenizer pads with "!" (id 0), so
its last_hidden_state is the same tensor. A full 24-layer tower is also accepted.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTokenizer

MAX_TOKENS = 77
OPENCLIP_LAYERS = 24  # ViT-H-14's text tower; SD-2's converted copy keeps 23
# The original appends this to every prompt and uses the negative prompt for guidance.
POSITIVE_PROMPT = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera,   "
    "hyper detailed photo - realistic maximum detail, 32k, Color Grading, ultra HD, extreme "
    "meticulous detailing,  skin pore detailing, hyper sharpness, perfect without deformations."
)
NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, "
    "CG Style, 3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, "
    "frames, watermark, signature, jpeg artifacts, deformed, lowres, over-smooth"
)


def full_prompt(prompt: str) -> str:
    """The user's prompt plus the original's quality suffix.

    The original concatenates without a separator ("a catCinematic, ..."); a ", " is put here.
    """
    prompt = prompt.strip()
    return f"{prompt}, {POSITIVE_PROMPT}" if prompt else POSITIVE_PROMPT


@torch.no_grad()
def encode_text(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]
) -> torch.Tensor:
    """(B, 77, D) penultimate-layer states after ln_final, as the original's embedder."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids.to(text_encoder.device)
    if text_encoder.config.num_hidden_layers == OPENCLIP_LAYERS:
        out = text_encoder(ids, output_hidden_states=True)
        norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
        return norm(out.hidden_states[-2])
    return text_encoder(ids).last_hidden_state
