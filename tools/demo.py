"""Run the default model end to end on tiny random weights and write a real MP4.

    python tools/demo.py [--out demo.mp4] [--model t2v-5b] [--keep]

Builds the tiny weights (tools/make_tiny_weights.py), packs them (tools/pack_weights.py), starts
the real Cog server (tools/serve.py → coglet) with COG_WEIGHTS pointing at the tarball, posts one
prediction over HTTP and saves the returned video. The frames are noise: the weights are random.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from cogvx.dev.tiny import save_tiny_weights
from cogvx.weights.pack import pack_folder

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {"t2v-5b": "cog.yaml", "t2v-2b": "cog.t2v-2b.yaml", "t2v-1.5": "cog.t2v-1.5.yaml"}
FRAMES = {"t2v-5b": 49, "t2v-2b": 49, "t2v-1.5": 33}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: dict | None = None, timeout: float = 10) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            health = _call(f"{base}/health-check")
            if health.get("status") in ("READY", "SETUP_FAILED"):
                return health
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo.mp4"))
    parser.add_argument("--model", choices=sorted(CONFIGS), default="t2v-5b")
    parser.add_argument("--prompt", default="a cat walking on the grass in the garden")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cogvx-demo-") as tmp:
        t0 = time.perf_counter()
        folder = save_tiny_weights(args.model, Path(tmp, "tiny"))
        tar = pack_folder(folder, Path(tmp, "weights.tar"), log=lambda _: None)
        print(f"[demo] tiny {args.model} weights packed into {tar.name}", flush=True)
        port = _free_port()
        env = {
            **os.environ,
            "COG_WEIGHTS": str(tar),
            "COGVX_WEIGHTS_CACHE": str(Path(tmp, "cache")),
            "COGVX_OUTPUT_DIR": str(Path(tmp, "outputs")),
        }
        cmd = [sys.executable, str(ROOT / "tools" / "serve.py"), CONFIGS[args.model]]
        cmd += ["--port", str(port), "--workdir", str(Path(tmp))]
        log = open(Path(tmp, "server.log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            health = _wait_ready(base, proc, timeout=600)
            if health["status"] != "READY":
                print(health["setup"]["logs"][-3000:])
                return 1
            print(f"[demo] coglet READY on {base}; predicting...", flush=True)
            inputs = {
                "prompt": args.prompt,
                "num_frames": FRAMES[args.model],
                "num_inference_steps": args.steps,
                "seed": 42,
            }
            result = _call(f"{base}/predictions", {"input": inputs}, timeout=900)
            if result.get("status") != "succeeded":
                print(json.dumps(result, indent=1)[:3000])
                return 1
            print(result["logs"].rstrip())
            payload = result["output"].split(",", 1)[1]
            args.out.write_bytes(base64.b64decode(payload))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    print(
        f"[demo] wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB) "
        f"in {time.perf_counter() - t0:.0f}s; metrics: {result.get('metrics')}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
