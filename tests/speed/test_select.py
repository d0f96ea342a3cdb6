"""The speed choices are pure functions of the card, the installed packages and the settings
(issue "Fast on the GPU"): tables over the cards users rent."""

from __future__ import annotations

import pytest

from cogvx.errors import SetupError
from cogvx.speed.select import (
    ATTENTION_CHOICES,
    BACKENDS,
    PACKAGES,
    Choice,
    Device,
    choose_attention,
    choose_compile,
    choose_quantize,
    installed_packages,
    package_missing,
    plan_speedups,
)

H200 = Device(True, (9, 0), "NVIDIA H200")
H100 = Device(True, (9, 0), "NVIDIA H100 80GB HBM3")
L40S = Device(True, (8, 9), "NVIDIA L40S")
RTX4090 = Device(True, (8, 9), "NVIDIA GeForce RTX 4090")
A100 = Device(True, (8, 0), "NVIDIA A100-SXM4-80GB")
T4 = Device(True, (7, 5), "Tesla T4")
B200 = Device(True, (10, 0), "NVIDIA B200")
CPU = Device(False)
CARDS = {"H200": H200, "H100": H100, "L40S": L40S, "4090": RTX4090, "A100": A100, "T4": T4}

ALL = frozenset(PACKAGES)
NONE: frozenset[str] = frozenset()
SAGE = frozenset({"sageattention"})
FA3 = frozenset({"flash_attn_3"})
FA2 = frozenset({"flash_attn"})
FLASH = FA2 | FA3
AO = frozenset({"torchao"})

# ---------------------------------------------------------------- attention

# (card, packages) -> backend COGVX_ATTENTION=auto picks
AUTO_ATTENTION = [
    (H200, ALL, "sage"),
    (H100, ALL, "sage"),
    (H100, FLASH, "_flash_3"),
    (H100, FA3, "_flash_3"),
    (H100, FA2, "flash"),
    (H100, NONE, "native"),
    (L40S, ALL, "sage"),
    (L40S, FLASH, "flash"),  # FlashAttention 3 is Hopper-only
    (L40S, FA3, "native"),
    (RTX4090, SAGE, "sage"),
    (A100, ALL, "sage"),
    (A100, FLASH, "flash"),
    (A100, FA3, "native"),
    (A100, NONE, "native"),
    (T4, ALL, "native"),  # Turing: no SageAttention / FlashAttention kernels
    (B200, FLASH, "flash"),
    (CPU, ALL, "native"),
]


@pytest.mark.parametrize("env", [None, "", "auto", " AUTO "])
@pytest.mark.parametrize(("card", "packages", "expected"), AUTO_ATTENTION)
def test_auto_attention_picks_the_best_available(card, packages, expected, env):
    choice = choose_attention(card, packages, env)
    assert choice.value == expected
    if not card.cuda:
        assert choice.reason == "no CUDA device"
    elif expected == "native":
        assert "torch SDPA picks its own kernel" in choice.reason and card.name in choice.reason
    else:
        assert choice.reason.startswith("auto: ") and card.name in choice.reason


@pytest.mark.parametrize("env", ["off", "native", "OFF"])
@pytest.mark.parametrize("card", [H100, T4, CPU], ids=["H100", "T4", "CPU"])
def test_attention_off_or_native_is_torch_sdpa(card, env):
    choice = choose_attention(card, ALL, env)
    assert choice.value == "native" and "COGVX_ATTENTION=" in choice.reason


# (env, card, packages) -> the backend, or the words of the refusal
FORCED_ATTENTION = [
    ("sage", H100, SAGE, "sage"),
    ("sage", A100, SAGE, "sage"),
    ("sage", H100, FLASH, "needs the sageattention package"),
    ("sage", T4, SAGE, "needs compute capability 8.0+"),
    ("sage", CPU, SAGE, "needs a CUDA device"),
    ("_flash_3", H100, FA3, "_flash_3"),
    ("_flash_3", L40S, FA3, "Hopper"),
    ("_flash_3", H100, FA2, "needs the flash_attn_3 package"),
    ("flash", A100, FA2, "flash"),
    ("flash", A100, FA3, "needs the flash_attn package"),
    ("flash", T4, FA2, "needs compute capability 8.0+"),
    ("xformers", T4, frozenset({"xformers"}), "xformers"),
    ("xformers", T4, NONE, "needs the xformers package"),
    ("_native_cudnn", H100, NONE, "_native_cudnn"),
    ("_native_cudnn", T4, NONE, "needs compute capability 8.0+"),
    ("_native_flash", A100, NONE, "_native_flash"),
    ("_native_efficient", T4, NONE, "_native_efficient"),
    ("_native_efficient", CPU, NONE, "needs a CUDA device"),
    ("_native_math", CPU, NONE, "_native_math"),
]


@pytest.mark.parametrize(("env", "card", "packages", "expected"), FORCED_ATTENTION)
def test_forced_attention_backend(env, card, packages, expected):
    if expected == env:
        choice = choose_attention(card, packages, env)
        assert choice.value == env and f"COGVX_ATTENTION={env}" in choice.reason
        return
    with pytest.raises(SetupError) as e:
        choose_attention(card, packages, env)
    message = str(e.value)
    assert message.startswith(f"COGVX_ATTENTION={env}: ") and expected in message
    assert "use one of ['auto', 'off', 'native'" in message and "'sage'" in message


@pytest.mark.parametrize("env", ["fast", "flash_hub", "sdpa", "flash3", "1"])
def test_unknown_attention_value_is_refused_with_the_allowed_values(env):
    with pytest.raises(SetupError, match=rf"COGVX_ATTENTION='{env}' is not allowed; use one of"):
        choose_attention(H100, ALL, env)
    assert ATTENTION_CHOICES[:3] == ("auto", "off", "native")


# ---------------------------------------------------------------- compile

# (card, offload, env) -> on?, or the words of the refusal
COMPILE = [
    (H100, "none", None, True),
    (H100, "none", "auto", True),
    (H100, "model", None, True),
    (H100, "model", "1", True),
    (H100, "none", "0", False),
    (H100, "sequential", None, False),
    (H100, "sequential", "auto", False),
    (H100, "sequential", "0", False),
    (H100, "sequential", "1", "sequential offload"),
    (T4, "model", None, True),
    (CPU, "cpu", None, False),
    (CPU, "cpu", "0", False),
    (CPU, "cpu", "1", "no CUDA device"),
]


@pytest.mark.parametrize(("card", "offload", "env", "expected"), COMPILE)
def test_compile_choice(card, offload, env, expected):
    if isinstance(expected, str):
        with pytest.raises(SetupError, match=f"COGVX_COMPILE=1 cannot be used: .*{expected}"):
            choose_compile(card, offload, env)
        return
    choice = choose_compile(card, offload, env)
    assert choice.value is expected
    if not card.cuda and env is None:
        assert choice.reason == "no CUDA device"
    if offload == "sequential" and env != "0":
        assert "sequential offload" in choice.reason


@pytest.mark.parametrize("env", ["yes", "on", "2", "true"])
def test_bad_compile_value_is_refused(env):
    with pytest.raises(
        SetupError, match=rf"COGVX_COMPILE='{env}' is not allowed.*'1', '0', 'auto'"
    ):
        choose_compile(H100, "none", env)


# ---------------------------------------------------------------- quantize

# (card, packages, offload, env) -> mode, or the words of the refusal
QUANTIZE = [
    (H200, AO, "none", None, "fp8"),
    (H100, AO, "none", "auto", "fp8"),
    (H100, AO, "model", None, "fp8"),
    (L40S, AO, "none", None, "fp8"),
    (RTX4090, AO, "model", None, "fp8"),
    (A100, AO, "none", None, "none"),  # no fp8 tensor cores: bf16
    (T4, AO, "none", None, "none"),
    (H100, NONE, "none", None, "none"),  # no torchao
    (H100, AO, "sequential", None, "none"),
    (CPU, AO, "cpu", None, "none"),
    (H100, AO, "none", "none", "none"),
    (CPU, NONE, "cpu", "none", "none"),
    (H100, AO, "none", "fp8", "fp8"),
    (L40S, AO, "none", "fp8", "fp8"),
    (A100, AO, "none", "fp8", "fp8 needs compute capability 8.9+"),
    (H100, NONE, "none", "fp8", "torchao package is not installed"),
    (H100, AO, "sequential", "fp8", "sequential offload"),
    (CPU, AO, "cpu", "fp8", "no CUDA device"),
    (A100, AO, "none", "int8", "int8"),
    (T4, AO, "model", "int8", "int8"),
    (H100, AO, "none", "int8", "int8"),
    (A100, NONE, "none", "int8", "torchao package is not installed"),
    (CPU, AO, "cpu", "int8", "no CUDA device"),
]


@pytest.mark.parametrize(("card", "packages", "offload", "env", "expected"), QUANTIZE)
def test_quantize_choice(card, packages, offload, env, expected):
    if expected not in ("fp8", "int8", "none"):
        with pytest.raises(SetupError, match=f"COGVX_QUANTIZE={env} cannot be used: .*{expected}"):
            choose_quantize(card, packages, offload, env)
        return
    choice = choose_quantize(card, packages, offload, env)
    assert choice.value == expected
    if not card.cuda and env is None:
        assert choice.reason == "no CUDA device"


# (card, packages, offload) -> why COGVX_QUANTIZE=auto stays in bf16
BF16_REASONS = [
    (A100, AO, "none", "fp8 needs compute capability 8.9+, NVIDIA A100-SXM4-80GB (sm 8.0) has less;"
     " bf16 (int8 weight-only saves memory, not time: COGVX_QUANTIZE=int8)"),
    (T4, AO, "model", "fp8 needs compute capability 8.9+, Tesla T4 (sm 7.5) has less;"
     " bf16 (int8 weight-only saves memory, not time: COGVX_QUANTIZE=int8)"),
    (H100, NONE, "none", "the torchao package is not installed; bf16"),
    (T4, NONE, "none", "the torchao package is not installed; bf16"),
    (L40S, AO, "sequential", "sequential offload keeps the weights on the CPU; bf16"),
    (CPU, AO, "cpu", "no CUDA device"),
]  # fmt: skip


@pytest.mark.parametrize(("card", "packages", "offload", "reason"), BF16_REASONS)
def test_why_the_transformer_stays_bf16(card, packages, offload, reason):
    assert choose_quantize(card, packages, offload, None) == Choice("none", reason)


def test_auto_fp8_only_when_compiled():
    assert choose_quantize(H100, AO, "none", None, compiled=True).value == "fp8"
    choice = choose_quantize(H100, AO, "none", None, compiled=False)
    assert choice.value == "none" and "compiled" in choice.reason
    assert choose_quantize(H100, AO, "none", "fp8", compiled=False).value == "fp8"  # forced


@pytest.mark.parametrize("env", ["nf4", "int4", "fp16", "bf16", "yes"])
def test_bad_quantize_value_is_refused(env):
    with pytest.raises(SetupError, match=rf"COGVX_QUANTIZE='{env}' is not allowed .*'fp8'"):
        choose_quantize(H100, AO, "none", env)


# ---------------------------------------------------------------- plan, packages


def test_plan_on_a_hopper_with_everything():
    plan = plan_speedups(H100, ALL, "none")
    assert (plan.attention.value, plan.compile.value, plan.quantize.value) == ("sage", True, "fp8")
    lines = plan.log_lines()
    assert [line.split("=")[0] for line in lines] == [
        "speed: attention",
        "speed: compile",
        "speed: quantize",
    ]
    assert lines[1].startswith("speed: compile=on (auto")


def test_plan_follows_the_settings():
    plan = plan_speedups(H100, ALL, "model", "_flash_3", "0", "int8")
    assert (plan.attention.value, plan.compile.value, plan.quantize.value) == (
        "_flash_3",
        False,
        "int8",
    )
    plan = plan_speedups(H100, ALL, "none", compile_env="0")
    assert plan.quantize.value == "none"  # fp8 without compile does not pay


def test_plan_on_cpu_changes_nothing():
    plan = plan_speedups(CPU, ALL, "cpu")
    assert plan.log_lines() == [
        "speed: attention=native (no CUDA device)",
        "speed: compile=off (no CUDA device)",
        "speed: quantize=none (no CUDA device)",
    ]


def test_plan_with_sequential_offload():
    plan = plan_speedups(L40S, ALL, "sequential")
    assert (plan.attention.value, plan.compile.value, plan.quantize.value) == (
        "sage",
        False,
        "none",
    )


def test_installed_packages_only_resolves_names_and_reads_versions():
    from importlib.metadata import version

    found = installed_packages(("torch", "no_such_package_cogvx", "no_such_package_cogvx.sub"))
    assert found == {"torch": version("torch")}
    assert set(installed_packages()) <= set(PACKAGES)


# (installed versions) -> backend auto picks on an H100, and why a too-old one was passed over
VERSIONED = [
    ({"sageattention": "1.0.6"}, "native", "sage", "needs sageattention>=2.1.1, 1.0.6 is"),
    ({"sageattention": "2.1.1"}, "sage", None, None),
    ({"sageattention": "2.2.0", "flash_attn": "2.8.3"}, "sage", None, None),
    ({"sageattention": "1.0.6", "flash_attn": "2.8.3"}, "flash", None, None),
    ({"flash_attn": "2.5.9"}, "native", "flash", "needs flash_attn>=2.6.3, 2.5.9 is"),
    ({"flash_attn": "2.6.3"}, "flash", None, None),
    ({"flash_attn_3": "3.0.0b1"}, "_flash_3", None, None),  # FA3 wheels carry no version floor
    # metadata without a version: diffusers refuses the backend, so it counts as missing
    ({"flash_attn_3": ""}, "native", "_flash_3", "flash_attn_3 package, which gives no version"),
    ({"sageattention": ""}, "native", "sage", "sageattention package, which gives no version"),
    ({"sageattention": "2.x-custom"}, "sage", None, None),  # unparsable: not refused
]


@pytest.mark.parametrize(("installed", "expected", "forced", "why"), VERSIONED)
def test_a_package_older_than_diffusers_accepts_counts_as_missing(installed, expected, forced, why):
    assert choose_attention(H100, installed, None).value == expected
    if forced:
        with pytest.raises(SetupError, match=why):
            choose_attention(H100, installed, forced)
    assert choose_attention(T4, installed, None).value == "native"


def test_min_versions_are_the_ones_diffusers_checks():
    from diffusers.models import attention_dispatch as dispatch

    assert BACKENDS["sage"].min_version == dispatch._REQUIRED_SAGE_VERSION
    assert BACKENDS["flash"].min_version == dispatch._REQUIRED_FLASH_VERSION
    assert BACKENDS["xformers"].min_version == dispatch._REQUIRED_XFORMERS_VERSION


# SageAttention's kernels exist for these cards only (sageattention's `sageattn` raises
# "Unsupported CUDA architecture" on any other)
SAGE_CARDS = [
    ((8, 0), True),
    ((8, 6), True),
    ((8, 7), False),  # Jetson AGX Orin
    ((8, 9), True),
    ((9, 0), True),
    ((10, 0), False),  # B200
    ((12, 0), True),
    ((12, 1), False),  # GB10
]


@pytest.mark.parametrize(("capability", "supported"), SAGE_CARDS)
def test_sage_runs_only_on_the_cards_sageattention_has_kernels_for(capability, supported):
    card = Device(True, capability, "card")
    installed = {"sageattention": "2.2.0", "flash_attn": "2.8.3"}
    assert choose_attention(card, installed, None).value == ("sage" if supported else "flash")
    if supported:
        assert choose_attention(card, installed, "sage").value == "sage"
    else:
        with pytest.raises(SetupError, match=r"SageAttention runs on sm 8.0, 8.6, 8.9, 9.0, 12.0"):
            choose_attention(card, installed, "sage")


def test_a_package_without_version_metadata_is_missing_for_quantize_too():
    assert choose_quantize(H100, {"torchao": ""}, "none", None).value == "none"
    with pytest.raises(SetupError, match="torchao package gives no version in its metadata"):
        choose_quantize(H100, {"torchao": ""}, "none", "fp8")
    assert choose_quantize(H100, {"torchao": "0.18.0"}, "none", "fp8").value == "fp8"


def test_installed_packages_reports_a_package_without_metadata_and_the_plan_skips_it(
    tmp_path, monkeypatch
):
    """A folder on sys.path with no dist-info: it resolves, diffusers would refuse it."""
    if installed_packages(("sageattention",)):
        pytest.skip("sageattention is installed")
    (tmp_path / "sageattention").mkdir()
    (tmp_path / "sageattention" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = installed_packages(("sageattention",))
    assert found == {"sageattention": ""}
    assert package_missing(found, "sageattention") == "gives no version in its metadata"
    assert choose_attention(H100, found, None).value == "native"
