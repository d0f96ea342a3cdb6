"""VEnhancer's video ControlNet on diffusers blocks, and the UNet + ControlNet denoiser.

The ControlNet is a copy of the UNet's encoder and middle block (same diffusers blocks, same
resampling patches) plus: a 3x3 conv on the key-frame latents added after `conv_in` at key-frame
positions, the noise-augmentation level and the scale `s` added to the time embedding of key
frames, and 1x1 zero convs on every skip and on the middle block, which feed the UNet as
`down_block_additional_residuals` / `mid_block_additional_residual`.
"""

from __future__ import annotations

import torch
from diffusers import UNet3DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_3d_blocks import UNetMidBlock3DCrossAttn, get_down_block
from torch import nn

from cogvx.venhancer.unet import patch_resampling


class VideoControlNet(ModelMixin, ConfigMixin):
    """Encoder + middle block of a UNet3DConditionModel conditioned on noisy key-frame latents."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int = 64,
        hint_channels: int = 4,
    ):
        super().__init__()
        c0 = block_out_channels[0]
        emb_dim = c0 * 4
        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, True, 0)
        self.time_embedding = TimestepEmbedding(c0, emb_dim, act_fn="silu")
        self.hint_time_embedding = nn.Linear(emb_dim, emb_dim)  # original: hint_time_zero_linear
        self.scale_embedding = TimestepEmbedding(c0, emb_dim, act_fn="silu")  # scale_cond
        self.hint_conv = nn.Conv2d(hint_channels, c0, kernel_size=3, padding=1)  # input_hint_block
        self.transformer_in = TransformerTemporalModel(
            num_attention_heads=8,
            attention_head_dim=attention_head_dim,
            in_channels=c0,
            num_layers=1,
            norm_num_groups=norm_num_groups,
        )
        self.down_blocks = nn.ModuleList()
        skip_channels = [c0]
        out_ch = c0
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            last = i == len(block_out_channels) - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers_per_block,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=emb_dim,
                    add_downsample=not last,
                    resnet_eps=norm_eps,
                    resnet_act_fn="silu",
                    resnet_groups=norm_num_groups,
                    cross_attention_dim=cross_attention_dim,
                    num_attention_heads=attention_head_dim,
                    downsample_padding=1,
                    dual_cross_attention=False,
                )
            )
            skip_channels += [out_ch] * (layers_per_block + (0 if last else 1))
        self.mid_block = UNetMidBlock3DCrossAttn(
            in_channels=out_ch,
            temb_channels=emb_dim,
            resnet_eps=norm_eps,
            resnet_act_fn="silu",
            output_scale_factor=1,
            cross_attention_dim=cross_attention_dim,
            num_attention_heads=attention_head_dim,
            resnet_groups=norm_num_groups,
            dual_cross_attention=False,
        )
        self.controlnet_down_blocks = nn.ModuleList(nn.Conv2d(c, c, 1) for c in skip_channels)
        self.controlnet_mid_block = nn.Conv2d(out_ch, out_ch, 1)
        patch_resampling(self)

    @classmethod
    def from_unet_config(cls, config: dict, hint_channels: int = 4) -> VideoControlNet:
        """A ControlNet shaped like the UNet3DConditionModel built from `config`."""
        keys = (
            "in_channels",
            "down_block_types",
            "block_out_channels",
            "layers_per_block",
            "norm_num_groups",
            "cross_attention_dim",
            "attention_head_dim",
        )
        return cls(**{k: config[k] for k in keys if k in config}, hint_channels=hint_channels)

    def _embed(self, t: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
        return mlp(self.time_proj(t).to(self.dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        hint: torch.Tensor,
        hint_timestep: torch.Tensor,
        scale: torch.Tensor,
        mask_cond: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Residuals for the UNet's skips and middle block.

        sample (B,C,F,H,W); timestep, hint_timestep, scale (B,); encoder_hidden_states (B,L,D);
        hint (B,C,K,H,W) key-frame latents; mask_cond (B,F): key-frame index of each frame or -1.
        """
        b, _, f, h, w = sample.shape
        emb = self._embed(timestep.expand(b), self.time_embedding)
        emb = emb.repeat_interleave(f, dim=0).view(b, f, -1)
        key = (mask_cond >= 0)[..., None]
        hint_emb = self.hint_time_embedding(self._embed(hint_timestep, self.time_embedding))
        emb = torch.where(key, emb + hint_emb[:, None], emb)
        emb = torch.where(key, emb + self._embed(scale, self.scale_embedding)[:, None], emb)
        emb = emb.reshape(b * f, -1)
        context = encoder_hidden_states.repeat_interleave(f, dim=0)

        x = self.conv_in(sample.permute(0, 2, 1, 3, 4).reshape(b * f, -1, h, w))
        bi, fi = torch.nonzero(mask_cond >= 0, as_tuple=True)
        if len(bi):
            frames = hint.permute(0, 2, 1, 3, 4)[bi, mask_cond[bi, fi]]
            x = x.view(b, f, *x.shape[1:])
            x[bi, fi] += self.hint_conv(frames.to(x.dtype))
            x = x.view(b * f, *x.shape[2:])
        x = self.transformer_in(x, num_frames=f, return_dict=False)[0]

        skips = [x]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = block(
                    hidden_states=x, temb=emb, encoder_hidden_states=context, num_frames=f
                )
            else:
                x, res = block(hidden_states=x, temb=emb, num_frames=f)
            skips += res
        x = self.mid_block(x, emb, encoder_hidden_states=context, num_frames=f)
        down = tuple(conv(s) for conv, s in zip(self.controlnet_down_blocks, skips, strict=True))
        return down, self.controlnet_mid_block(x)


class VEnhancerUNet(nn.Module):
    """UNet3DConditionModel + VideoControlNet: (x_t, t, text, key frames) -> v-prediction."""

    def __init__(self, unet: UNet3DConditionModel, controlnet: VideoControlNet):
        super().__init__()
        self.unet = patch_resampling(unet)
        self.controlnet = controlnet

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        hint: torch.Tensor,
        t_hint: torch.Tensor,
        s_cond: torch.Tensor,
        mask_cond: torch.Tensor,
    ) -> torch.Tensor:
        """v for x (B,4,F,H,W) at integer timesteps t (B,); see VideoControlNet.forward."""
        down, mid = self.controlnet(x, t, y, hint, t_hint, s_cond, mask_cond)
        return self.unet(
            x,
            t,
            encoder_hidden_states=y,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
