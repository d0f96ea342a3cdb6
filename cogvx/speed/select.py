"""What to speed up and how, as pure functions of the device, the installed packages and the
deployment settings (the caller measures the device; nothing here touches CUDA).

- Attention (`COGVX_ATTENTION`): auto picks SageAttention (on the cards its kernels cover), else
  FlashAttention 3 on Hopper, else FlashAttention 2, else torch's own SDPA (which picks flash /
  cuDNN / efficient kernels itself). A package older than diffusers accepts, or one whose
  metadata gives no version, counts as missing (PyPI's `sageattention` is 1.0.6; diffusers'
  backend needs 2.1.1+).
- Compile (`COGVX_COMPILE`): regional `torch.compile` of the transformer blocks on CUDA, except
  with sequential offload (accelerate's per-layer hooks break full graphs).
- Quantize (`COGVX_QUANTIZE`, the video models' meaning): fp8 (torchao dynamic fp8 activations
  and fp8 weights) on cards with fp8 tensor cores (sm 8.9+), else bf16.

`installed` is the packages that resolve: a name -> version mapping (`installed_packages`), or
any collection of names when the versions do not matter (the tests' tables).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from packaging.version import InvalidVersion, Version

from cogvx.errors import SetupError
from cogvx.settings import ATTENTION_ENV, COMPILE_ENV, QUANTIZE_ENV

T = TypeVar("T")

NO_CUDA = "no CUDA device"
AUTO = "auto"


@dataclass(frozen=True)
class Device:
    """What the choices need to know about the device (measured by the caller)."""

    cuda: bool
    capability: tuple[int, int] = (0, 0)
    name: str = "cpu"

    def describe(self) -> str:
        """'NVIDIA H100 (sm 9.0)' or 'cpu'."""
        if not self.cuda:
            return self.name
        return f"{self.name} (sm {self.capability[0]}.{self.capability[1]})"


@dataclass(frozen=True)
class Choice(Generic[T]):
    """One decision and why it was made (logged at setup)."""

    value: T
    reason: str


@dataclass(frozen=True)
class Backend:
    """A diffusers attention backend (`AttentionBackendName` value) and what it needs."""

    name: str
    package: str | None = None  # import name that must resolve (diffusers' own package check)
    cuda: bool = True
    min_capability: tuple[int, int] = (0, 0)
    majors: tuple[int, ...] | None = None  # only these compute-capability majors (FA3: Hopper)
    what: str = ""
    min_version: str | None = None  # the oldest package version diffusers' backend accepts
    capabilities: tuple[tuple[int, int], ...] | None = None  # only these exact (major, minor)

    def missing(self, device: Device, installed: Collection[str]) -> str | None:
        """Why this backend cannot run here, None when it can."""
        if self.cuda and not device.cuda:
            return f"{self.what} needs a CUDA device"
        why_not = self.package and package_missing(installed, self.package)
        if why_not:
            return f"{self.what} needs the {self.package} package, which {why_not}"
        if self.package and self.min_version and isinstance(installed, Mapping):
            have = installed[self.package]
            if too_old(have, self.min_version):
                return f"{self.what} needs {self.package}>={self.min_version}, {have} is installed"
        if device.cuda and device.capability < self.min_capability:
            need = ".".join(map(str, self.min_capability))
            return f"{self.what} needs compute capability {need}+, {device.describe()} has less"
        if device.cuda and self.majors and device.capability[0] not in self.majors:
            return f"{self.what} runs on Hopper (sm 9.x) only, not on {device.describe()}"
        if device.cuda and self.capabilities and device.capability not in self.capabilities:
            cards = ", ".join(f"{major}.{minor}" for major, minor in self.capabilities)
            return f"{self.what} runs on sm {cards} only, not on {device.describe()}"
        return None


# sageattention 2.x's `sageattn` dispatches on the card's arch and has kernels for sm80, sm86,
# sm89, sm90 and sm120 only; any other card (sm 8.7 Orin, 10.0 B200, 12.1 GB10...) raises
# "Unsupported CUDA architecture" at the first call (thu-ml/SageAttention, sageattention/core.py)
SAGE_CAPABILITIES = ((8, 0), (8, 6), (8, 9), (9, 0), (12, 0))

# The diffusers backends that fit CogVideoX's joint attention (no mask, no varlen packing) and need
# no kernel download at run time (the *_hub backends fetch theirs from the Hub).
BACKENDS = {
    b.name: b
    for b in (
        Backend("native", cuda=False, what="torch SDPA"),
        Backend("_native_math", cuda=False, what="torch SDPA math kernel"),
        Backend("_native_efficient", what="torch SDPA memory-efficient kernel"),
        Backend("_native_flash", min_capability=(8, 0), what="torch SDPA flash kernel"),
        Backend("_native_cudnn", min_capability=(8, 0), what="torch SDPA cuDNN kernel"),
        Backend(
            "flash",
            "flash_attn",
            min_capability=(8, 0),
            what="FlashAttention 2",
            min_version="2.6.3",
        ),
        Backend("_flash_3", "flash_attn_3", majors=(9,), what="FlashAttention 3"),
        Backend(
            "sage",
            "sageattention",
            min_capability=(8, 0),
            what="SageAttention",
            min_version="2.1.1",
            capabilities=SAGE_CAPABILITIES,
        ),
        Backend("xformers", "xformers", what="xFormers", min_version="0.0.29"),
    )
}
AUTO_ORDER = ("sage", "_flash_3", "flash")  # best first; native when none can run
ATTENTION_CHOICES = (AUTO, "off", *BACKENDS)
COMPILE_CHOICES = ("1", "0", AUTO)
QUANTIZE_CHOICES = (AUTO, "none", "int8", "fp8")
PACKAGES = ("sageattention", "flash_attn", "flash_attn_3", "xformers", "torchao")
FP8_CAPABILITY = (8, 9)  # Ada / Hopper and newer have fp8 tensor cores


def installed_packages(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """The packages among `names` that import-resolve (find_spec only: nothing is imported),
    each with its installed version ('' when its metadata does not say: `package_missing` counts
    such a package as missing)."""
    found = {}
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except (ImportError, ValueError):
            continue
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = ""
    return found


def package_missing(installed: Collection[str], name: str) -> str | None:
    """Why package `name` counts as missing ('is not installed', 'gives no version in its
    metadata'), None when it is installed.

    The one rule (`Backend.missing`, the quantize choice, `cogvx.speed.attention`): diffusers
    reads each backend's package version from its metadata and treats a package without one as
    missing, so a '' version in a name -> version mapping is missing here too."""
    if name not in installed:
        return "is not installed"
    if isinstance(installed, Mapping) and not installed[name]:
        return "gives no version in its metadata"
    return None


def too_old(have: str, need: str) -> bool:
    """Whether version `have` is below `need` (an unknown or unparsable version is not)."""
    try:
        return Version(have) < Version(need)
    except InvalidVersion:
        return False


def _clean(env: str | None) -> str:
    return (env or "").strip().lower() or AUTO


def _not_allowed(var: str, value: str, allowed: tuple[str, ...]) -> SetupError:
    return SetupError(f"{var}={value!r} is not allowed; use one of {list(allowed)}")


def choose_attention(device: Device, installed: Collection[str], env: str | None) -> Choice[str]:
    """The diffusers attention backend name for the transformer (COGVX_ATTENTION)."""
    value = _clean(env)
    if value not in ATTENTION_CHOICES:
        raise _not_allowed(ATTENTION_ENV, value, ATTENTION_CHOICES)
    if value in ("off", "native"):
        return Choice("native", f"{ATTENTION_ENV}={value}")
    if value != AUTO:
        missing = BACKENDS[value].missing(device, installed)
        if missing:
            raise SetupError(
                f"{ATTENTION_ENV}={value}: {missing}; use one of {list(ATTENTION_CHOICES)}"
            )
        return Choice(value, f"{ATTENTION_ENV}={value} on {device.describe()}")
    if not device.cuda:
        return Choice("native", NO_CUDA)
    for name in AUTO_ORDER:
        if BACKENDS[name].missing(device, installed) is None:
            return Choice(name, f"auto: {BACKENDS[name].what} on {device.describe()}")
    return Choice(
        "native",
        f"auto: no SageAttention / FlashAttention for {device.describe()}; "
        "torch SDPA picks its own kernel",
    )


def choose_compile(device: Device, offload: str, env: str | None) -> Choice[bool]:
    """Regional torch.compile of the transformer blocks on or off (COGVX_COMPILE)."""
    value = _clean(env)
    if value not in COMPILE_CHOICES:
        raise _not_allowed(COMPILE_ENV, value, COMPILE_CHOICES)
    if value == "0":
        return Choice(False, f"{COMPILE_ENV}=0")
    forced = value == "1"
    why_not = None
    if not device.cuda:
        why_not = NO_CUDA
    elif offload == "sequential":
        why_not = "sequential offload: its per-layer hooks break compiled graphs"
    if why_not and forced:
        raise SetupError(f"{COMPILE_ENV}=1 cannot be used: {why_not}; use 0 or auto")
    if why_not:
        return Choice(False, why_not)
    if forced:
        return Choice(True, f"{COMPILE_ENV}=1")
    return Choice(True, f"auto: CUDA with offload={offload}")


def choose_quantize(
    device: Device,
    installed: Collection[str],
    offload: str,
    env: str | None,
    compiled: bool = True,
) -> Choice[str]:
    """'fp8' | 'int8' | 'none' for the transformer's linear layers (COGVX_QUANTIZE).

    `compiled`: whether the transformer will be compiled; auto picks fp8 only then, as its
    per-call activation scaling is only cheap when fused."""
    value = _clean(env)
    if value not in QUANTIZE_CHOICES:
        raise SetupError(
            f"{QUANTIZE_ENV}={value!r} is not allowed for the video models; use one of "
            f"{list(QUANTIZE_CHOICES)} (none | int8 | nf4 are the captioning model's values)"
        )
    if value == "none":
        return Choice("none", f"{QUANTIZE_ENV}=none (bf16)")
    forced = value != AUTO
    why_not, fallback = None, "bf16"
    if not device.cuda:
        why_not = NO_CUDA
    elif offload == "sequential":
        why_not = "sequential offload keeps the weights on the CPU"
    elif torchao_missing := package_missing(installed, "torchao"):
        why_not = f"the torchao package {torchao_missing}"
    elif value in (AUTO, "fp8") and device.capability < FP8_CAPABILITY:
        why_not = f"fp8 needs compute capability 8.9+, {device.describe()} has less"
        fallback = f"bf16 (int8 weight-only saves memory, not time: {QUANTIZE_ENV}=int8)"
    if why_not and forced:
        raise SetupError(f"{QUANTIZE_ENV}={value} cannot be used: {why_not}; use none or auto")
    if why_not:
        return Choice("none", why_not if why_not == NO_CUDA else f"{why_not}; {fallback}")
    if forced:
        return Choice(value, f"{QUANTIZE_ENV}={value} on {device.describe()}")
    if not compiled:
        return Choice("none", "fp8 pays off only with the transformer compiled; bf16")
    return Choice("fp8", f"auto: fp8 tensor cores on {device.describe()}")


@dataclass(frozen=True)
class SpeedPlan:
    """The three setup-time decisions for one pipeline."""

    attention: Choice[str]
    compile: Choice[bool]
    quantize: Choice[str]

    def log_lines(self) -> list[str]:
        """One line per decision: 'speed: attention=sage (auto: ...)'."""
        on = "on" if self.compile.value else "off"
        return [
            f"speed: attention={self.attention.value} ({self.attention.reason})",
            f"speed: compile={on} ({self.compile.reason})",
            f"speed: quantize={self.quantize.value} ({self.quantize.reason})",
        ]


def plan_speedups(
    device: Device,
    installed: Collection[str],
    offload: str,
    attention_env: str | None = None,
    compile_env: str | None = None,
    quantize_env: str | None = None,
) -> SpeedPlan:
    """All three decisions (pure: the caller passes the device, packages and settings)."""
    compiled = choose_compile(device, offload, compile_env)
    return SpeedPlan(
        attention=choose_attention(device, installed, attention_env),
        compile=compiled,
        quantize=choose_quantize(device, installed, offload, quantize_env, compiled.value),
    )
