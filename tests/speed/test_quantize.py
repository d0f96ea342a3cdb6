"""The torchao configs `quantize_transformer` hands over leave the process's inductor settings
alone (torchao's default, set_inductor_config=True, turns coordinate-descent tuning on for every
later compile in the process)."""

from __future__ import annotations

import pytest
import torch

from cogvx.dev.tiny import build_tiny_pipeline
from cogvx.speed.apply import quantize_transformer


@pytest.fixture
def configs(monkeypatch):
    """The configs handed to torchao's `quantize_` (recorded, not applied)."""
    import torchao.quantization

    handed: list = []
    monkeypatch.setattr(
        torchao.quantization, "quantize_", lambda model, config, filter_fn: handed.append(config)
    )
    return handed


@pytest.mark.parametrize(
    ("mode", "capability"), [("fp8", (9, 0)), ("fp8", (8, 9)), ("int8", (8, 0))]
)
def test_the_configs_do_not_set_inductor_options(configs, mode, capability):
    quantize_transformer(object(), mode, capability, lambda _: None)
    [config] = configs
    assert config.set_inductor_config is False


def test_int8_on_the_cpu_leaves_inductor_settings_as_they_were():
    inductor = torch._inductor.config
    before = (inductor.coordinate_descent_tuning, inductor.coordinate_descent_check_all_directions)
    transformer = build_tiny_pipeline("t2v-5b").transformer.to(torch.bfloat16)
    quantize_transformer(transformer, "int8", (8, 0), lambda _: None)
    after = (inductor.coordinate_descent_tuning, inductor.coordinate_descent_check_all_directions)
    assert after == before == (False, False)
