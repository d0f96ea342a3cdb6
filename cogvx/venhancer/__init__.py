"""VEnhancer (space-time video super-resolution) re-implemented on diffusers."""
