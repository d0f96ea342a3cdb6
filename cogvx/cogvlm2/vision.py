"""EVA2-CLIP vision tower of CogVLM2 (post-norm ViT), 2x2 downsampling conv and GLU projector.

Module names follow the checkpoint keys under `model.vision.` so the state dict loads unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .config import CogVLM2Config, VisionConfig


class PatchEmbedding(nn.Module):
    """Conv patchify, prepend the CLS embedding, add the learned position embedding."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size)
        self.cls_embedding = nn.Parameter(torch.zeros(1, cfg.hidden_size))
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, 1 + patches, hidden)."""
        x = self.proj(pixels).flatten(2).transpose(1, 2)
        cls = self.cls_embedding.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return x + self.position_embedding.weight.unsqueeze(0)


class Attention(nn.Module):
    """Unmasked multi-head self-attention with a fused qkv projection."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query_key_value = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.query_key_value(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.dense(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACT2FN[cfg.hidden_act]
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Post-norm ("sandwich") block: the LayerNorms act on each branch output before the add."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attention = Attention(cfg)
        self.mlp = MLP(cfg)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.input_layernorm(self.attention(x))
        return x + self.post_attention_layernorm(self.mlp(x))


class Transformer(nn.Module):
    """Stack of post-norm layers."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class GLU(nn.Module):
    """Projector into the LM width: linear -> LayerNorm -> GELU -> SiLU-gated MLP."""

    def __init__(self, in_features: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.linear_proj = nn.Linear(in_features, hidden_size, bias=False)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.dense_h_to_4h = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.dense_4h_to_h = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.linear_proj(x)))
        return self.dense_4h_to_h(F.silu(self.gate_proj(x)) * self.dense_h_to_4h(x))


class VisionTower(nn.Module):
    """Frames (T, C, S, S) -> per-frame LM embeddings (T, boi + patches + eoi, LM hidden)."""

    def __init__(self, cfg: CogVLM2Config) -> None:
        super().__init__()
        v = cfg.vision
        self.patch_embedding = PatchEmbedding(v)
        self.transformer = Transformer(v)
        self.conv = nn.Conv2d(v.hidden_size, v.hidden_size, kernel_size=2, stride=2)
        self.linear_proj = GLU(v.hidden_size, cfg.hidden_size, cfg.intermediate_size)
        self.boi = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.eoi = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """Drop CLS, fold the patches into their row-major grid and apply the 2x2 conv."""
        x = x[:, 1:]
        b, n, h = x.shape
        side = int(round(n**0.5))
        grid = x.reshape(b, side, side, h).permute(0, 3, 1, 2)
        return self.conv(grid)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(T, C, S, S) pixels in the tower dtype -> (T, tokens_per_frame, LM hidden)."""
        x = self.transformer(self.patch_embedding(pixels))
        x = self.downsample(x).flatten(2).transpose(1, 2)
        x = self.linear_proj(x)
        t = x.shape[0]
        return torch.cat([self.boi.expand(t, -1, -1), x, self.eoi.expand(t, -1, -1)], dim=1)
