"""VEnhancer's resolution/fps/chunk arithmetic and noise schedule against the original's outputs."""

import json

import pytest
import torch

from cogvx.venhancer import arith
from cogvx.venhancer.schedule import Schedule
from tests.support.shared_fixtures import fixture_dir

FIX = fixture_dir("venhancer")
ROWS = json.loads((FIX / "arith/arith.json").read_text())["rows"]
SCHED = FIX / "schedule"


def _f32(values) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


@pytest.mark.parametrize(
    "row",
    ROWS,
    ids=lambda r: f"{r['in_h']}x{r['in_w']}-x{r['up_scale']}-{r['target_fps_requested']}fps",
)
def test_plan_matches_original(row):
    p = arith.make_plan(
        row["in_frames"],
        row["in_fps"],
        row["in_h"],
        row["in_w"],
        row["up_scale"],
        row["target_fps_requested"],
    )
    assert p.interp == row["interp_f_num"]
    assert p.out_fps == row["out_fps"]
    assert p.out_frames == row["out_frames"]
    assert (p.target_h, p.target_w) == (row["target_h"], row["target_w"])
    assert list(p.padding) == row["padding_w1_w2_h1_h2"]
    assert (p.padded_h, p.padded_w) == (row["padded_h"], row["padded_w"])
    assert [1, *p.latent_shape] == row["latent_shape"]
    assert row["hint_shape"] == [1, 4, p.in_frames, *p.latent_shape[2:]]
    assert [list(c) for c in p.chunks] == row["chunk_frame_ranges"]
    assert (len(p.chunks) > 1) == row["chunking_used"]
    assert [p.out_frames, p.target_h, p.target_w, 3] == row["output_video_shape_FHWC"]
    shown = [k for k in row["key_frame_positions"] if k != "..."]
    assert p.key_frame_positions[: len(shown)] == shown
    assert all(p.mask_cond[k] == i for i, k in enumerate(p.key_frame_positions))
    tiles = {tuple(s.stop - s.start for s in t) for t in arith.decode_tiles(*p.latent_shape[1:])}
    assert sorted(tiles) == sorted(map(tuple, row["vae_decode_tiles_frames_h_w"]))


def test_arith_edge_cases():
    assert arith.interp_count(8, 30) == 3  # 32 fps, not 30
    assert arith.interp_count(8, 12) == 1 and arith.interp_count(8, 4) == 0  # round half to even
    assert arith.interp_count(1, 100) == 8
    assert arith.mask_cond(3, 2) == [0, -1, -1, 1, -1, -1, 2]
    assert arith.pad_to_fit(720, 1280) == (0, 0, 0, 0)
    assert arith.pad_to_fit(1254, 1920) == (0, 64, 0, 42)  # an aligned width gains a full 64
    assert arith.make_chunks(32, 0) == [(0, 32)]
    assert arith.make_chunks(97, 1, overlap=1) == [(0, 31), (30, 61), (60, 97)]
    for bad in (dict(overlap=0), dict(overlap=17)):
        with pytest.raises(ValueError, match="chunk_overlap"):
            arith.make_chunks(97, 1, **bad)
    with pytest.raises(ValueError, match="target_fps"):
        arith.interp_count(8, 0)


def test_schedule_matches_original():
    full = json.loads((SCHED / "schedule_full.json").read_text())
    s = Schedule()
    assert s.sigmas[-1] == 1.0 and s.alphas[-1] == 0.0  # zero terminal SNR without rescaling
    # float32 tan/log/sigmoid differ by an ulp or two between CPU vector units, so the fixture's
    # machine cannot be matched bit for bit on every CPU; timesteps (the integers) match exactly.
    torch.testing.assert_close(s.sigmas, _f32(full["sigma_vp"]), rtol=0, atol=4e-7)
    torch.testing.assert_close(s.alphas[:900], _f32(full["alpha_vp"])[:900], rtol=0, atol=2e-6)
    ve = _f32(full["sigma_ve"])
    torch.testing.assert_close(s.log_sigmas_ve.exp()[:900], ve[:900], rtol=4e-5, atol=0)
    assert torch.isinf(ve[999]) and torch.isinf(s.log_sigmas_ve[999])


@pytest.mark.parametrize("name", ["fast_8", "fast_15", "normal_8", "normal_15"])
def test_timesteps_match_original(name):
    seq = json.loads((SCHED / "timesteps.json").read_text())["sequences"][name]
    s = Schedule()
    mode, steps = seq["solver_mode"], seq["steps_arg"]
    assert torch.equal(s.grid(mode, steps), _f32(seq["timesteps_float"]))
    sig = s.solver_sigmas(mode, steps)
    assert len(sig) - 1 == seq["n_solver_steps"] == (14 if mode == "fast" else steps)
    torch.testing.assert_close(sig, _f32(seq["solver_sigmas_ve"]), rtol=1e-5, atol=0)
    assert s.timesteps(mode, steps) == seq["model_timesteps_int"]
    t = torch.tensor(seq["model_timesteps_int"])
    torch.testing.assert_close(s.alphas[t], _f32(seq["alpha_vp_at_model_t"]), rtol=0, atol=2e-6)
    torch.testing.assert_close(s.sigmas[t], _f32(seq["sigma_vp_at_model_t"]), rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["fast_8", "fast_15", "normal_8", "normal_15"])
def test_an_ulp_of_sigma_never_changes_a_model_timestep(name):
    """Another CPU's log/exp may move a solver sigma by an ulp; 'normal' grids put t on .5 ties
    (normal_15: 786.5, 561.5, 336.5, 111.5), where round-half-to-even alone would then flip."""
    seq = json.loads((SCHED / "timesteps.json").read_text())["sequences"][name]
    s = Schedule()
    sig = s.solver_sigmas(seq["solver_mode"], seq["steps_arg"])[:-1]
    for ulps in (1, 2, 4):
        for way in (torch.inf, -torch.inf):
            moved = sig
            for _ in range(ulps):
                moved = torch.nextafter(moved, torch.full_like(moved, way))
            assert [s.model_timestep(x) for x in moved] == seq["model_timesteps_int"], (ulps, way)


def test_noise_aug():
    na = json.loads((SCHED / "noise_aug.json").read_text())
    s = Schedule()
    for level in (150, 250, 300):
        ref = na["noise_aug"][str(level)]
        t = s.noise_aug_timestep(level)
        assert t == ref["t_hint"]
        assert s.alphas[t].item() == pytest.approx(ref["alpha_vp"], rel=1e-5)
        assert s.sigmas[t].item() == pytest.approx(ref["sigma_vp"], rel=1e-5)
    with pytest.raises(ValueError, match="noise_aug"):
        s.noise_aug_timestep(0)  # the original's pure-noise hint (t_hint = -1)
    init = na["initial_noising_total_noise_levels_900"]
    assert s.alphas[899].item() == pytest.approx(init["alpha_vp"], rel=1e-5)
    assert s.log_sigmas_ve[899].exp().item() == pytest.approx(init["sigma_ve"], rel=1e-5)
