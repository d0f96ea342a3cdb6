"""release_openmp_pool frees the calling thread's idle libgomp pool (see VideoService)."""

import os
import subprocess
import sys

from tests.support.coglet_harness import REPO

CODE = """
import os, threading, torch
from cogvx.gpu import release_openmp_pool, releasing_openmp_pool
def threads():
    return len(os.listdir("/proc/self/task"))
before = threads()
torch.ones(1 << 20).sum()  # a parallel op: this thread's pool gets its one worker
with_pool = threads()
assert release_openmp_pool()
print(with_pool - before, with_pool - threads())
@releasing_openmp_pool
def fails():
    torch.ones(1 << 20).sum()
    raise ValueError
try:
    fails()
except ValueError:
    print(with_pool - threads())
"""


def test_idle_pool_threads_are_joined_also_when_the_call_raises():
    # OMP_NUM_THREADS=2 (tests pin 1, which makes no pool threads at all)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1"]
