"""VEnhancer sampler against the original loop's runs (toy model and the tiny original UNet)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cogvx.venhancer import sampler
from cogvx.venhancer.convert import load_venhancer_unet
from cogvx.venhancer.schedule import Schedule
from tests.support.shared_fixtures import fixture_dir

FIX = fixture_dir("venhancer")
RUNS = json.loads((FIX / "sampler/runs.json").read_text())


@pytest.fixture(scope="module")
def ref():
    return load_file(FIX / "sampler/reference.safetensors")


@pytest.fixture(scope="module")
def unet():
    return load_venhancer_unet(FIX / "unet/model.safetensors")


def toy(x, t, y, hint, t_hint, s_cond, mask_cond):
    """The fixture's toy model: v = (0.5 + t/2000) x + 0.1 mean(y) + 0.2 key-frame hint."""
    g = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for f in range(x.shape[2]):
            if mask_cond[b, f] >= 0:
                g[b, :, f] = hint[b, :, int(mask_cond[b, f])]
    col = (-1, 1, 1, 1, 1)
    return (0.5 + t / 2000).view(col) * x + 0.1 * y.mean(dim=(1, 2)).view(col) + 0.2 * g


def _cond(ref, inp):
    g = lambda k: ref[f"{inp}.{k}"]  # noqa: E731
    return sampler.Conditioning(
        g("y"), g("negative_y"), g("noised_hint"), g("t_hint"), g("s_cond"), g("mask_cond")
    )


def _run(ref, name, model, **kw):
    run = RUNS["runs"][name]
    inp = run["inputs"]
    key = f"noise_{inp}_{run['solver_mode']}{run['steps_arg']}"
    with torch.no_grad():
        return sampler.sample(
            model,
            ref[f"{inp}.noised_lr"],
            _cond(ref, inp),
            Schedule(),
            run["solver_mode"],
            run["steps_arg"],
            run["guide_scale"],
            run["guide_rescale"],
            RUNS["inputs"][inp]["chunk_inds"],
            run["eta"],
            lambda i, x: ref[f"{key}.{i:02d}"],
            **kw,
        )


@pytest.mark.parametrize("name", [n for n in RUNS["runs"] if n.startswith("toy")])
def test_toy_runs_match_original(ref, name):
    # 1e-6 apart: the schedule's float32 transcendental functions differ by an ulp across CPUs.
    torch.testing.assert_close(_run(ref, name, toy), ref[f"{name}.final"], rtol=0, atol=1e-5)


def test_unet_denoiser_step(ref, unet):
    """One guided x0 prediction of the tiny original UNet (2 model calls)."""
    s = Schedule()
    sig = s.solver_sigmas("fast", 15)
    start = ref["in5.noised_lr"] * sig[0] * (1 / (sig[0] ** 2 + 1) ** 0.5)
    # sig[0] comes from float32 log/exp, an ulp apart across CPUs; 1-2 ulp of sig[0] move start
    # by up to 4.8e-7 (2 ulp of |start| < 4), while using sig[1] would move it by 1.4e-2.
    torch.testing.assert_close(start, ref["unet_fast_eta0.step00.model_in"], rtol=0, atol=2e-6)
    d = sampler.Denoiser(unet, _cond(ref, "in5"), s)
    with torch.no_grad():
        x0 = d(start, sig[0])
    want = ref["unet_fast_eta0.step00.denoised"]
    torch.testing.assert_close(x0, want, rtol=0, atol=2e-4)  # CFG 7.5 amplifies round-off
    assert d.calls == 1


def test_unet_chunked_step_blends_in_place(ref, unet):
    """Three overlapping chunks: each chunk's head is blended before its tail feeds the next."""
    s = Schedule()
    step = 13
    d = sampler.Denoiser(unet, _cond(ref, "in64"), s, chunks=RUNS["inputs"]["in64"]["chunk_inds"])
    with torch.no_grad():
        x0 = d(
            ref[f"unet_chunk_fast_eta0.step{step:02d}.model_in"], s.solver_sigmas("fast", 15)[step]
        )
    want = ref[f"unet_chunk_fast_eta0.step{step:02d}.denoised"]
    torch.testing.assert_close(x0, want, rtol=0, atol=2e-4)  # blending copies: off by 0.056
    assert d.calls == 3


@pytest.mark.slow
def test_unet_full_run(ref, unet):
    """The whole 8-step SDE run with the original's Brownian noise (16 UNet calls)."""
    want = ref["unet_normal8_eta1.final"]
    torch.testing.assert_close(_run(ref, "unet_normal8_eta1", unet), want, rtol=0, atol=2e-3)


def test_cost_levers(ref):
    """Guidance off halves the model calls; 'fast' ignores steps; batched CFG gives the same."""
    calls = []

    def counting(x, *args):
        calls.append(x.shape[2])
        return toy(x, *args)

    base = _run(ref, "toy_fast_eta1", counting)
    assert len(calls) == 28 and set(calls) == {5}
    calls.clear()
    batched = _run(ref, "toy_fast_eta1", counting, batch_cfg=True)
    assert len(calls) == 14
    torch.testing.assert_close(batched, base, rtol=0, atol=1e-6)
    calls.clear()
    cond = _cond(ref, "in64")
    with torch.no_grad():
        sampler.sample(
            counting,
            ref["in64.noised_lr"],
            cond,
            Schedule(),
            "fast",
            3,
            guidance_scale=1.0,
            chunks=[(0, 31), (15, 46), (30, 64)],
            eta=0.0,
        )
    assert calls == [31, 31, 34] * 14


def test_progress_and_noise_calls(ref):
    seen, draws = [], []

    def noise(i, x):
        draws.append(i)
        return torch.zeros_like(x)

    cond = _cond(ref, "in5")
    with torch.no_grad():
        sampler.sample(
            toy,
            ref["in5.noised_lr"],
            cond,
            Schedule(),
            "normal",
            4,
            noise_fn=noise,
            progress=lambda i, n: seen.append((i, n)),
        )
    assert seen == [(i, 4) for i in range(1, 5)]
    assert draws == [0, 1, 2]  # no draw on the last step (to sigma 0)
