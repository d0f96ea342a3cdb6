"""Shared runtime of the CogVideoX Cog models: weights, video I/O, GPU memory policy, checks."""

__version__ = "0.1.0"
