"""The fast path: Real-ESRGAN (`upscale`) and RIFE (`rife`) on finished frames, loaded together
(`models`), with output caps (`caps`).
"""
