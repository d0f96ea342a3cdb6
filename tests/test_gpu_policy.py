"""The memory policy is a pure function of the card's free memory and the model's need."""

import pytest

from cogvx.gpu import HEADROOM_GB, plan_memory
from cogvx.models import VARIANTS

# (card GiB) -> expected offload mode per model; the cards users rent.
EXPECTED = {
    80: {
        "t2v-2b": "none",
        "t2v-5b": "none",
        "t2v-1.5": "none",
        "i2v-5b": "none",
        "i2v-1.5": "none",
    },
    40: {
        "t2v-2b": "none",
        "t2v-5b": "none",
        "t2v-1.5": "none",
        "i2v-5b": "none",
        "i2v-1.5": "none",
    },
    24: {
        "t2v-2b": "none",
        "t2v-5b": "model",
        "t2v-1.5": "model",
        "i2v-5b": "model",
        "i2v-1.5": "model",
    },
    16: {
        "t2v-2b": "model",
        "t2v-5b": "sequential",
        "t2v-1.5": "sequential",
        "i2v-5b": "sequential",
        "i2v-1.5": "sequential",
    },
}


@pytest.mark.parametrize("free_gb", sorted(EXPECTED))
@pytest.mark.parametrize("model", sorted(VARIANTS))
def test_offload_mode_per_card(free_gb, model):
    plan = plan_memory(VARIANTS[model].memory, free_gb=free_gb - 0.5, total_gb=free_gb)
    assert plan.offload == EXPECTED[free_gb][model]
    assert plan.device == "cuda"
    assert plan.vae_tiling and plan.vae_slicing
    assert f"{free_gb - 0.5:.1f} GiB free" in plan.reason
    assert "transformer +" in plan.reason and "activations ~" in plan.reason


def test_no_gpu_means_cpu_and_no_offload():
    plan = plan_memory(VARIANTS["t2v-5b"].memory, free_gb=None)
    assert (plan.device, plan.offload, plan.vae_tiling) == ("cpu", "cpu", False)


def test_too_small_card_is_refused_with_numbers():
    need = VARIANTS["t2v-1.5"].memory
    with pytest.raises(RuntimeError, match=r"6\.0 GiB free.*needs at least ~11\.5 GiB"):
        plan_memory(need, free_gb=6.0)


def test_boundary_includes_headroom():
    need = VARIANTS["t2v-5b"].memory
    assert plan_memory(need, free_gb=need.no_offload + HEADROOM_GB).offload == "none"
    assert plan_memory(need, free_gb=need.no_offload + HEADROOM_GB - 0.01).offload == "model"


def test_forced_mode_and_bad_forced_mode():
    need = VARIANTS["t2v-2b"].memory
    assert plan_memory(need, free_gb=80, forced="sequential").offload == "sequential"
    with pytest.raises(ValueError, match="COGVX_OFFLOAD='fast' is not allowed"):
        plan_memory(need, free_gb=80, forced="fast")


def test_need_is_weights_plus_activations():
    need = VARIANTS["t2v-5b"].memory
    w = need.weights_gib()
    assert w["transformer"] == pytest.approx(5_570_283_072 * 2 / 2**30)
    assert w["text_encoder"] == pytest.approx(8.87, abs=0.01)  # T5-XXL encoder in bf16
    assert need.no_offload == pytest.approx(sum(w.values()) + need.activation_gib)
    assert need.model_offload == pytest.approx(w["transformer"] + need.activation_gib)
    assert need.sequential_offload == need.activation_gib
    assert need.sequential_offload < need.model_offload < need.no_offload
    # 2b's transformer is smaller than T5: model offload is bounded by the text encoder
    two = VARIANTS["t2v-2b"].memory
    assert two.model_offload == pytest.approx(two.weights_gib()["text_encoder"] + 4.0)
