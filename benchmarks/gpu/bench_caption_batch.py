"""Batched captioning at full size on a GPU, random weights: clips/s per batch size.

    python -m benchmarks.gpu.bench_caption_batch [--tokens 256 --clips 16 --budget 500]
    python -m benchmarks.gpu.bench_caption_batch --tiny     # CPU smoke run (tests)

CogVLM2-Caption's shapes (Llama-3-8B: 32 layers, 32 heads, 8 KV heads, 14336 MLP; EVA2-CLIP-E
vision tower: 63 layers of 1792, 224 px, patch 14 — the defaults of THUDM's CogVLM2 config)
built with random bf16 weights on the card (no download), the tokenizer of the tiny caption
folder (`cogvx.dev.caption`). 24 random frames per clip ('chat': one per second of a 24 s clip)
and a fixed number of new tokens (no end token: random weights never stop on their own), so
every row costs the same. Per batch size: clips/s, tokens/s, peak memory, and the batch size the
memory rule (`cogvx.cogvlm2.batching`) would pick. Captions are noise; ratios last.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cogvx.cogvlm2.batching import choose_batch_size
from cogvx.cogvlm2.captioner import CogVLM2Captioner
from cogvx.cogvlm2.config import CogVLM2Config, VisionConfig
from cogvx.cogvlm2.model import CogVLM2Model

FRAMES = 24


def real_config(tiny: CogVLM2Config) -> CogVLM2Config:
    """The released sizes on the tiny config's special ids."""
    vision = VisionConfig(hidden_size=1792, intermediate_size=15360, num_hidden_layers=63,
                          num_heads=16, image_size=224, patch_size=14)  # fmt: skip
    return dataclasses.replace(
        tiny, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        max_position_embeddings=8192, vision=vision, template_version="chat",
    )  # fmt: skip


def build(tiny: bool, device: str) -> CogVLM2Captioner:
    from transformers import PreTrainedTokenizerFast

    from cogvx.dev.caption import save_tiny_caption_weights

    folder = save_tiny_caption_weights(Path(tempfile.mkdtemp()) / "caption")
    if tiny:
        return CogVLM2Captioner.from_folder(folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    cfg = real_config(CogVLM2Config.from_folder(folder))
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = CogVLM2Model(cfg).eval()
    finally:
        torch.set_default_dtype(dtype)
    model.language_model.generation_config.eos_token_id = None  # run every row to the end
    model.language_model.generation_config.pad_token_id = cfg.pad_token_id
    return CogVLM2Captioner(model, tokenizer)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--sizes", default="1,4,8,16")
    ap.add_argument("--budget", type=float, default=500)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    captioner = build(args.tiny, "cuda" if cuda else "cpu")
    card = torch.cuda.get_device_name() if cuda else "CPU (no CUDA device)"
    frames = 2 if args.tiny else FRAMES
    clips = [np.random.default_rng(i).integers(0, 255, (frames, 224, 224, 3), dtype=np.uint8)
             for i in range(args.clips)]  # fmt: skip
    if cuda:
        free = torch.cuda.mem_get_info()[0]
        pick, why = choose_batch_size(free, captioner.model.config, frames, args.tokens)
        print(f"{card}: the memory rule would pick {pick} ({why})")
    deadline = time.monotonic() + args.budget
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        if time.monotonic() > deadline:
            rows.append((size, None, None, None))
            continue
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        captioner.generate_ids_batch(clips[:size], max_new_tokens=4)  # warm-up
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tokens = 0
        for i in range(0, args.clips, size):
            out = captioner.generate_ids_batch(clips[i : i + size], max_new_tokens=args.tokens)
            tokens += sum(len(r) for r in out)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        rows.append((size, args.clips / seconds, tokens / seconds, peak))
    print(f"\n{card}, {frames} frames a clip, {args.tokens} new tokens\n")
    print("| batch size | clips/s | tokens/s | peak GiB |")
    print("| --- | --- | --- | --- |")
    base = rows[0][1]
    for size, cps, tps, peak in rows:
        if cps is None:
            print(f"| {size} | skipped: time budget | | |")
        else:
            print(f"| {size} | {cps:.2f} | {tps:.0f} | {peak:.1f} |")
    print("\nratios (clips/s batched / one at a time):")
    for size, cps, _, _ in rows[1:]:
        if cps is not None and base:
            print(f"  batch {size}: {cps / base:.2f}x")


if __name__ == "__main__":
    main()
