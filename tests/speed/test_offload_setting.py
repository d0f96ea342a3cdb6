"""COGVX_OFFLOAD is checked on every machine: a typo fails setup on a CPU-only build box too,
not first on the GPU deployment."""

from __future__ import annotations

import pytest

from cogvx.gpu import OFFLOAD_MODES, current_plan, plan_memory
from cogvx.models import get_variant

NEED = get_variant("t2v-5b").memory


def test_an_invalid_offload_mode_is_refused_without_a_gpu(monkeypatch):
    monkeypatch.setenv("COGVX_OFFLOAD", "bogus")
    with pytest.raises(ValueError, match=r"COGVX_OFFLOAD='bogus' is not allowed; use one of"):
        current_plan(NEED)  # no CUDA here: before the fix the variable was never read
    with pytest.raises(ValueError) as e:
        plan_memory(NEED, None, forced="bogus")
    assert all(mode in str(e.value) for mode in OFFLOAD_MODES)


@pytest.mark.parametrize("mode", OFFLOAD_MODES)
def test_a_valid_offload_mode_without_a_gpu_runs_on_the_cpu_and_says_so(mode):
    plan = plan_memory(NEED, None, forced=mode)
    assert (plan.device, plan.offload) == ("cpu", "cpu")
    assert f"COGVX_OFFLOAD={mode} applies on a GPU only" in plan.reason
