"""Setup-time GPU speed-ups for the CogVideoX transformer: attention backend, fp8/int8, compile."""
