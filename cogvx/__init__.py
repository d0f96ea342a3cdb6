"""Shared runtime for the CogVideoX Cog models: weights, video I/O, GPU memory policy, input checks."""

__version__ = "0.1.0"
