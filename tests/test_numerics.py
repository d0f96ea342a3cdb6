"""Numerical settings the package pins so one seed gives one video (cogvx/__init__.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A batch-1 Linear layer (a matrix-vector product) whose weight starts at each float offset of
# a 64-byte line, against a 64-byte-aligned copy: `bad` lists the offsets whose output differs.
PROBE = """
import json, sys
{imports}
import torch
torch.manual_seed(0)
x, w, b = torch.randn(1, 32), torch.randn(128, 32), torch.randn(128)
buf = torch.empty(128 * 32 + 64)
start = (-buf.data_ptr() // 4) % 16  # first 64-byte-aligned float of buf
ref = torch.nn.functional.linear(x, buf[start:start + w.numel()].view_as(w).copy_(w), b)
bad = []
for off in range(16):
    w2 = buf[off:off + w.numel()].view_as(w)
    w2.copy_(w)
    if not torch.equal(torch.nn.functional.linear(x, w2, b), ref):
        bad.append(off)
print(json.dumps({{"bad": bad, "cbwr": __import__("os").environ.get("MKL_CBWR")}}))
"""


def _probe(imports: str, env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=imports)],
        env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_matrix_products_do_not_depend_on_weight_alignment():
    # Seen on AMD EPYC (Zen 4, AVX-512) with MKL 2024.2: 12 of 16 offsets differ without it.
    got = _probe("import cogvx", {})
    assert got == {"bad": [], "cbwr": "AUTO,STRICT"}


def test_an_operator_setting_is_kept():
    assert _probe("import cogvx", {"MKL_CBWR": "COMPATIBLE"}) == {"bad": [], "cbwr": "COMPATIBLE"}
