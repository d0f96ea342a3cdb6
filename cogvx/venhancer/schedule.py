"""VEnhancer's noise schedule (logsnr_cosine_interp) and solver grids, bit-exact in float32.

VP quantities: x_t = alpha_t * x0 + sigma_t * eps with alpha^2 + sigma^2 = 1 (1000 steps).
The solver works in VE form: sigma_ve = sigma/alpha (infinite at t = 999).
"""

from __future__ import annotations

import math

import torch

NUM_TIMESTEPS = 1000
T_MAX = 899  # SDEdit start: sampling begins at t = 899 (total_noise_levels 900)
FAST_STEPS = 14  # model evaluations in 'fast' mode (t = 899, 799, ..., 90)
SOLVER_MODES = ("fast", "normal")
MAX_NOISE_AUG = 300
TIE_GRID = 1024  # t is snapped to 1/TIE_GRID before rounding (see model_timestep)


def _logsnr_cosine(n: int, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> torch.Tensor:
    a = math.atan(math.exp(-0.5 * logsnr_min))
    b = math.atan(math.exp(-0.5 * logsnr_max))
    u = torch.linspace(1, 0, n)
    return -2 * torch.log(torch.tan(a + u * (b - a)))


def vp_sigmas(
    n: int = NUM_TIMESTEPS, scale_min: float = 2.0, scale_max: float = 4.0
) -> torch.Tensor:
    """sigma_t of the zero-terminal-SNR logsnr_cosine_interp schedule, float32, length n."""
    u = torch.linspace(1, 0, n)
    low = _logsnr_cosine(n) + 2 * math.log(1 / scale_min)
    high = _logsnr_cosine(n) + 2 * math.log(1 / scale_max)
    sigmas = torch.sqrt(torch.sigmoid(-(u * low + (1 - u) * high)))
    if sigmas.max() != 1.0:  # zero terminal SNR; in float32 sigma(999) is already exactly 1
        scale = (1.0 - sigmas.min()) / (sigmas.max() - sigmas.min())
        sigmas = sigmas.min() + scale * (sigmas - sigmas.min())
    return sigmas


class Schedule:
    """The schedule tables plus the t <-> sigma_ve conversions the original solver uses."""

    def __init__(self) -> None:
        self.sigmas = vp_sigmas()
        self.alphas = torch.sqrt(1 - self.sigmas**2)
        self.log_sigmas_ve = torch.sqrt(self.sigmas**2 / (1 - self.sigmas**2)).log()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """VE sigma at (fractional) timesteps, interpolating log sigma linearly."""
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas_ve[low] + w * self.log_sigmas_ve[high]
        log_sigma[torch.isnan(log_sigma) | torch.isinf(log_sigma)] = float("inf")
        return log_sigma.exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of a 0-d VE sigma (inverse of t_to_sigma), shape (1,)."""
        if sigma == float("inf"):
            return torch.full((1,), float(NUM_TIMESTEPS - 1))
        log_sigmas = self.log_sigmas_ve.to(sigma)
        log_sigma = sigma.log()
        dists = log_sigma - log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).view(sigma.shape).reshape(1)

    def model_timestep(self, sigma: torch.Tensor) -> int:
        """The integer timestep the model receives at a solver sigma.

        t is first snapped to a 1/1024 grid: 'normal' grids put some t exactly on .5 (15 steps:
        786.5, 561.5, 336.5, 111.5), where one ulp of sigma from another CPU's log/exp would
        flip round-half-to-even; snapped, every machine gives the original's integer.
        """
        t = self.sigma_to_t(sigma).double()
        return int(torch.round(torch.round(t * TIE_GRID) / TIE_GRID).long())

    def grid(self, solver_mode: str, steps: int, t_max: int = T_MAX) -> torch.Tensor:
        """The float timestep grid ('trailing'); 'fast' ignores `steps` (15 points)."""
        if solver_mode not in SOLVER_MODES:
            raise ValueError(f"solver_mode must be one of {SOLVER_MODES}; got {solver_mode!r}")
        if solver_mode == "fast":
            t_mid = 500
            grid = torch.concat(
                [
                    torch.arange(t_max, t_mid - 1, -((t_max - t_mid + 1) / 4)),
                    torch.arange(t_mid, -1, -((t_mid + 1) / 11)),
                ]
            )
        else:
            if steps < 1:
                raise ValueError(f"steps must be >= 1; got {steps}")
            grid = torch.arange(t_max, -1, -((t_max + 1) / (steps + 1)))
        return grid.clamp_(0, t_max).to(torch.float32)

    def solver_sigmas(self, solver_mode: str, steps: int, t_max: int = T_MAX) -> torch.Tensor:
        """VE sigmas for DPM++ 2M SDE, ending in 0, with the penultimate entry dropped.

        'fast' always gives 14 solver steps; 'normal' gives `steps`.
        """
        sigmas = torch.cat([self.t_to_sigma(self.grid(solver_mode, steps, t_max)), torch.zeros(1)])
        return torch.cat([sigmas[:-2], sigmas[-1:]])

    def timesteps(self, solver_mode: str, steps: int) -> list[int]:
        """Integer model timesteps, one per solver step (= model evaluations per CFG pass)."""
        sigmas = self.solver_sigmas(solver_mode, steps)
        return [self.model_timestep(s) for s in sigmas[:-1]]

    def noise_aug_timestep(self, noise_aug: int) -> int:
        """t_hint for a noise_aug level in [1, 300] (the original's t_hint = noise_aug - 1).

        noise_aug = 0 would give t_hint = -1, which the original reads as t = 999 (a pure-noise
        hint embedded at t = -1): an upstream bug, refused here.
        """
        if not 1 <= noise_aug <= MAX_NOISE_AUG:
            raise ValueError(
                f"noise_aug must be an integer in [1, {MAX_NOISE_AUG}]; got {noise_aug} "
                "(0 makes the original use a pure-noise hint)"
            )
        return int(noise_aug) - 1

    def diffuse(self, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """alpha_t * x0 + sigma_t * noise at an integer timestep."""
        return self.alphas[t].to(x0) * x0 + self.sigmas[t].to(x0) * noise
