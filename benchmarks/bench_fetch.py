"""Weight fetch benchmark on loopback: install_weights vs `curl | tar` and vs `cat x.tar | tar`.

(a) server capping each connection at --rate-mbps (as CDNs do): install_weights (parallel
    ranges) vs a single `curl -s URL | tar -x` stream; target >= 8x faster.
(b) uncapped server: install_weights vs `cat x.tar | tar -x -f -` (the local ceiling);
    target <= 1.15x its time; also shown for a tarball without manifest (no sha256 work).
Each figure is the best of --repeat runs; the ratios come last. The server runs in its own
process on the same machine, so on few cores it takes CPU from the client: tar, sha256 and the
server share the cores, and the load (printed before and after, with the core count) moves both
ratios, (b) most.

python benchmarks/bench_fetch.py --size-mb 400
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cogvx.weights.install import install_weights
from cogvx.weights.pack import pack_folder

REPO = Path(__file__).resolve().parents[1]


def make_folder(root: Path, size_mb: int) -> None:
    """Random files shaped like a checkpoint: a few big shards, some small files."""
    total = size_mb * 1_000_000
    sizes = [int(total * f) for f in (0.4, 0.2, 0.15, 0.1, 0.05, 0.05)]
    sizes += [max(1, (total - sum(sizes)) // 30)] * 30
    piece = os.urandom(16 << 20)
    for i, size in enumerate(sizes):
        path = root / ("shards" if i < 6 else "small") / f"file{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, len(piece))
                f.write(piece[:n] if i % 2 else os.urandom(n))
                left -= n


def serve(tar: Path, rate_mbps: float) -> tuple[subprocess.Popen, str]:
    """Start tests/support/weights_server.py in its own process (no GIL shared with the client)."""
    cmd = [sys.executable, "-m", "tests.support.weights_server", str(tar)]
    cmd += ["--rate-mbps", str(rate_mbps)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def best(repeat: int, run: Callable[[Path], None], scratch: Path) -> float:
    """Best wall time of `run(out_dir)` over `repeat` runs, each into a fresh folder."""
    times = []
    for _ in range(repeat):
        out = scratch / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        os.sync()  # flush the previous run's dirty pages outside the timing
        t0 = time.perf_counter()
        run(out)
        times.append(time.perf_counter() - t0)
    shutil.rmtree(scratch / "out", ignore_errors=True)
    return min(times)


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {when}: {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def shell(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)


def main(argv: list[str] | None = None) -> int:
    """Run both comparisons and print the ratios last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=400)
    parser.add_argument("--rate-mbps", type=float, default=100.0, help="per-connection cap in (a)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--chunk-mb", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: system)")
    args = parser.parse_args(argv)

    print(load_line("before"), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-fetch-", dir=args.tmp))
    try:
        make_folder(scratch / "src", args.size_mb)
        tar = pack_folder(scratch / "src", scratch / "weights.tar", log=lambda _: None)
        plain = scratch / "plain.tar"  # what `tar -c` makes: no manifest, so no sha256 check
        shell(f"tar -C '{scratch / 'src'}' -cf '{plain}' .")
        shutil.rmtree(scratch / "src")
        size = tar.stat().st_size
        print(f"tarball: {size / 1e6:.0f} MB with a sha256 manifest, {os.cpu_count()} CPUs")

        def ours(url: str) -> Callable[[Path], None]:
            def run(out: Path) -> None:
                install_weights(
                    url,
                    out / "w",
                    connections=args.connections,
                    chunk_size=args.chunk_mb << 20,
                    use_pget=False,
                    log=lambda _: None,
                )

            return run

        curl = shutil.which("curl")
        server, url = serve(tar, args.rate_mbps)
        try:
            if curl:
                single_name = "curl | tar"
                single = f"{curl} -s --fail '{url}'"
            else:
                single_name = "python urllib | tar (no curl on PATH)"
                single = (
                    f"{sys.executable} -c 'import shutil, sys, urllib.request; "
                    "shutil.copyfileobj(urllib.request.urlopen(sys.argv[1]), sys.stdout.buffer, "
                    f"1 << 20)' '{url}'"
                )
            t_single = best(
                args.repeat, lambda out: shell(f"{single} | tar -x -f - -C '{out}'"), scratch
            )
            t_capped = best(args.repeat, ours(url), scratch)
        finally:
            server.terminate()
            server.wait()
        print(
            f"(a) server capped at {args.rate_mbps:.0f} MB/s per connection: {single_name} "
            f"{t_single:.2f} s, install_weights ({args.connections} connections) "
            f"{t_capped:.2f} s ({size / 1e6 / t_capped:.0f} MB/s)"
        )

        server, url = serve(tar, 0)
        plain_server, plain_url = serve(plain, 0)
        try:
            t_cat = best(
                args.repeat, lambda out: shell(f"cat '{tar}' | tar -x -f - -C '{out}'"), scratch
            )
            t_fast = best(args.repeat, ours(url), scratch)
            t_plain = best(args.repeat, ours(plain_url), scratch)
        finally:
            for proc in (server, plain_server):
                proc.terminate()
                proc.wait()
        print(
            f"(b) uncapped server: cat | tar {t_cat:.2f} s, install_weights {t_fast:.2f} s "
            f"({size / 1e6 / t_fast:.0f} MB/s, with sha256 of every file), "
            f"{t_plain:.2f} s without manifest"
        )
        print(load_line("after"))
        print(
            f"ratio: (a) {t_single / t_capped:.1f}x faster than {single_name.split(' (')[0]} "
            f"(target >= 8); (b) {t_fast / t_cat:.2f}x the time of cat | tar with sha256, "
            f"{t_plain / t_cat:.2f}x without (target <= 1.15)"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
