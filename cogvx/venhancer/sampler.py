"""VEnhancer's sampler: SDEdit start, CFG with rescale, frame chunks, DPM-Solver++(2M) SDE.

Reproduces the original loop step for step (v-prediction, VE sigmas, midpoint 2M SDE, chunks
blended in place). The Brownian-tree noise of the original is replaced by independent standard
normals per step, which have the same distribution; tests inject the original's draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from cogvx.venhancer.schedule import T_MAX, Schedule

# model(x_t, t, y, hint, t_hint, s_cond, mask_cond) -> v  (VEnhancerUNet's signature)
Model = Callable[..., torch.Tensor]
NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]  # (step index, x) -> standard normal like x
Progress = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass(frozen=True)
class Conditioning:
    """What the model sees besides x and t. Shapes: y (B,L,D), hint (B,4,K,H,W), mask (B,F)."""

    y: torch.Tensor
    negative_y: torch.Tensor | None
    hint: torch.Tensor
    t_hint: torch.Tensor
    s_cond: torch.Tensor
    mask_cond: torch.Tensor


def guided_v(
    model: Model,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    guidance_scale: float,
    guidance_rescale: float,
    batch_cfg: bool = False,
) -> torch.Tensor:
    """v with classifier-free guidance and std rescale (one model call when guidance is 1)."""
    args = (cond.hint, cond.t_hint, cond.s_cond, cond.mask_cond)
    if guidance_scale == 1.0 or cond.negative_y is None:
        return model(x, t, cond.y, *args)
    if batch_cfg:
        both = model(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([cond.y, cond.negative_y]),
            *(torch.cat([a, a]) for a in args),
        )
        c, u = both.chunk(2)
    else:
        c = model(x, t, cond.y, *args)
        u = model(x, t, cond.negative_y, *args)
    out = u + guidance_scale * (c - u)
    shape = (-1,) + (1,) * (c.ndim - 1)
    ratio = (c.flatten(1).std(dim=1) / (out.flatten(1).std(dim=1) + 1e-12)).view(shape)
    return out * (guidance_rescale * ratio + (1 - guidance_rescale) * 1.0)


def blend_chunks(chunks: list[torch.Tensor], overlap: int) -> torch.Tensor:
    """Join per-chunk results (B,C,F,H,W): linear cross-fade over the overlap, in place."""
    for k in range(1, len(chunks)):
        prev, cur = chunks[k - 1], chunks[k]
        extent = min(prev.shape[2], cur.shape[2], overlap)
        for i in range(extent):
            w = i / extent
            cur[:, :, i] = prev[:, :, i - extent] * (1 - w) + cur[:, :, i] * w
    parts = [c[:, :, : c.shape[2] - overlap] for c in chunks[:-1]] + [chunks[-1]]
    return torch.cat(parts, dim=2)


class Denoiser:
    """x0 from a VP-scaled x at a VE sigma, running the model per frame chunk."""

    def __init__(
        self,
        model: Model,
        cond: Conditioning,
        schedule: Schedule,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.2,
        chunks: Sequence[tuple[int, int]] | None = None,
        batch_cfg: bool = False,
    ):
        self.model, self.cond, self.schedule = model, cond, schedule
        self.guidance_scale, self.guidance_rescale = guidance_scale, guidance_rescale
        self.chunks = list(chunks) if chunks and len(chunks) > 1 else None
        self.batch_cfg = batch_cfg
        self.calls = 0  # guided evaluations (x2 model calls each when guidance is on)

    def _x0(self, x: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        v = guided_v(
            self.model, x, tt, cond, self.guidance_scale, self.guidance_rescale, self.batch_cfg
        )
        self.calls += 1
        alpha = self.schedule.alphas[t].to(x.device)
        sigma = self.schedule.sigmas[t].to(x.device)
        return alpha * x - sigma * v

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = self.schedule.model_timestep(sigma)
        if self.chunks is None:
            return self._x0(x, t, self.cond)
        outs = []
        for a, b in self.chunks:
            cond = replace(self.cond, mask_cond=self.cond.mask_cond[:, a:b])  # hint stays global
            outs.append(self._x0(x[:, :, a:b], t, cond))
        return blend_chunks(outs, self.chunks[0][1] - self.chunks[1][0])


def dpmpp_2m_sde(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    eta: float = 1.0,
    noise_fn: NoiseFn | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE, midpoint variant, starting at x = noise * sigmas[0] (VE form)."""
    if not torch.isfinite(sigmas[0]):
        raise ValueError("the solver cannot start at sigma = inf (t_max must be < 999)")
    if noise_fn is None:
        noise_fn = lambda i, x: torch.randn_like(x)  # noqa: E731
    x = noise * sigmas[0]
    old_denoised = h_last = None
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        c_in = 1 / (s**2 + 1.0**2) ** 0.5
        denoised = denoise(x * c_in, s)
        if s_next == 0:
            x = denoised
        else:
            h = -s_next.log() - -s.log()
            eta_h = eta * h
            x = s_next / s * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                assert h_last is not None  # set together with old_denoised
                r = h_last / h
                x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_fn(i, x) * s_next * (-2 * eta_h).expm1().neg().sqrt()
            old_denoised, h_last = denoised, h
        if progress is not None:
            progress(i + 1, n)
    return x


def sample(
    model: Model,
    noised_lr: torch.Tensor,
    cond: Conditioning,
    schedule: Schedule,
    solver_mode: str = "fast",
    steps: int = 15,
    guidance_scale: float = 7.5,
    guidance_rescale: float = 0.2,
    chunks: Sequence[tuple[int, int]] | None = None,
    eta: float = 1.0,
    noise_fn: NoiseFn | None = None,
    batch_cfg: bool = False,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Latents (B,4,F,H,W) from `noised_lr` = diffuse(x0, 899, eps), as the original samples.

    Like the original, the solver starts from noised_lr * sigma_ve(899) (no division by alpha).
    """
    sigmas = schedule.solver_sigmas(solver_mode, steps, T_MAX).to(noised_lr.device)
    denoiser = Denoiser(model, cond, schedule, guidance_scale, guidance_rescale, chunks, batch_cfg)
    return dpmpp_2m_sde(denoiser, noised_lr.float(), sigmas, eta, noise_fn, progress)
