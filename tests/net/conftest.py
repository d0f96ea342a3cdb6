"""Fixtures of the fetcher tests: a small LoRA file, a TLS server context for lora.example."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def lora_bytes() -> bytes:
    """A small safetensors file (the cache checks the format; loading is tested elsewhere)."""
    import torch
    from safetensors.torch import save

    return save({"a.lora_A.weight": torch.zeros(2, 4), "a.lora_B.weight": torch.zeros(4, 2)})


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A server context with a self-signed certificate for lora.example, and its cert file."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    root = tmp_path_factory.mktemp("tls")
    cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
           "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem"),
           "-subj", "/CN=lora.example", "-addext", "subjectAltName=DNS:lora.example"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(root / "cert.pem", root / "key.pem")
    return ctx, root / "cert.pem"
