"""CogVideoX generation: the diffusers pipelines of the variants table (T2V, I2V, V2V)."""
