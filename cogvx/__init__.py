"""Shared runtime of the CogVideoX Cog models: weights, video I/O, GPU memory policy, checks.

Importing the package pins one numerical setting before any math runs: MKL's conditional
numerical reproducibility (`MKL_CBWR=AUTO,STRICT`, unless the environment already sets it).
Without it MKL's CPU matrix products depend on the address alignment of their operands: on AMD
Zen 4 a Linear layer whose weight is not 16-byte aligned (safetensors memory-maps tensors at any
offset) gives other low bits than the same weight in a fresh allocation, so a model loaded from
a folder and the same model built in memory make different videos from one seed. MKL reads the
variable on its first call, so it must be set before torch computes anything.
"""

import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
