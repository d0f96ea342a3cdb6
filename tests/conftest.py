"""Test-session settings shared by every test (and inherited by the servers tests start)."""

import os

import cogvx  # noqa: F401 - first: pins MKL_CBWR before torch computes anything (cogvx/__init__)

# Tiny models on a shared 2-core machine: one OpenMP thread per process. With two, every small
# conv3d waits on a thread barrier whenever another process holds a core (60 ms vs 2.5 ms a call).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The tests serve weights and LoRAs from loopback servers: let user URLs reach private addresses
# (images leave this off). Refusal tests start their servers with it off or a one-host list.
os.environ["COGVX_ALLOW_PRIVATE_URLS"] = "1"
