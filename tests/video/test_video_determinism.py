"""Same frames -> the same file, byte for byte: every call, under load, whatever the CPU has.

The cause these guard against (measured on an AVX-512 Xeon): x264's AVX-512 kernels read
uninitialised heap memory, so identical frames encoded in one process gave 2-9 different MP4s per
300 calls, and what came out depended on the heap's leftovers (glibc's MALLOC_PERTURB_ changed
it). The checks below do not need such a CPU: they change the heap and switch off SIMD kernels
directly, so a writer that depends on either fails here on any machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cogvx.video import read_frames, write_video
from cogvx.video import write as video
from tests.support.media import sha256

ROOT = Path(__file__).resolve().parents[2]


def generation_like(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Float frames in [0, 1] as a pipeline returns them: moving blobs, a fixed grain, motion."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    grain = rng.normal(0, 0.03, (h, w)).astype(np.float32)
    out = np.empty((t, h, w, 3), np.float32)
    for i in range(t):
        out[i, ..., 0] = 0.5 + 0.4 * np.sin((x + 3 * i) / (w / 9)) * np.cos((y - 2 * i) / (h / 7))
        out[i, ..., 1] = 0.5 + 0.4 * np.cos((0.7 * x + 0.3 * y + 4 * i) / (w / 13)) + grain
        out[i, ..., 2] = 0.5 + 0.3 * np.sin((x - y + 5 * i) / (w / 5)) - grain
    return np.clip(out, 0, 1)


def encode_many(frames: np.ndarray, folder: Path, fmt: str, n: int) -> set[str]:
    return {sha256(write_video(frames, folder / f"{i}.{fmt}", fps=8, fmt=fmt)) for i in range(n)}


# A child process that encodes the same frames (from an .npy file) with the product's writer and
# prints the sha256 of each file. `no_simd` switches FFmpeg's own SIMD off (swscale, libavcodec,
# libavformat: av_force_cpu_flags(0)) and libvpx's (VPX_SIMD_CAPS=0, set by the parent).
CHILD = r"""
import ctypes, hashlib, json, sys
from pathlib import Path
import numpy as np
import av  # loads libavutil
from cogvx.video import write as video
frames_path, out_dir, no_simd, x264_params = sys.argv[1:5]
if no_simd == "1":
    avutil = next(line.split()[-1] for line in open("/proc/self/maps") if "libavutil" in line)
    ctypes.CDLL(avutil).av_force_cpu_flags(0)
frames = np.load(frames_path)
out = {}
for fmt in ("mp4", "webm"):
    path = Path(out_dir) / f"child.{fmt}"
    if fmt == "mp4" and x264_params != "default":
        video._encode_av(frames, path, 8, fmt, 80, x264_params=x264_params)
    else:
        video.write_video(frames, path, fps=8, fmt=fmt)
    out[fmt] = hashlib.sha256(path.read_bytes()).hexdigest()
print(json.dumps(out))
"""


def child_hashes(
    frames: np.ndarray,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    no_simd: bool = False,
    x264_params: str = "default",
) -> dict[str, str]:
    np.save(tmp_path / "frames.npy", frames)
    run_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if no_simd:
        run_env["VPX_SIMD_CAPS"] = "0"
    args = [str(tmp_path / "frames.npy"), str(tmp_path), "1" if no_simd else "0", x264_params]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def in_process_hashes(frames: np.ndarray, folder: Path) -> dict[str, str]:
    return {
        fmt: sha256(write_video(frames, folder / f"here.{fmt}", fps=8, fmt=fmt))
        for fmt in ("mp4", "webm")
    }


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_identical_frames_give_one_file_in_a_hundred_calls(tmp_path, fmt):
    frames = generation_like(17, 32, 48)
    assert len(encode_many(frames, tmp_path, fmt, 100)) == 1


def test_full_size_is_identical_under_load(tmp_path):
    """720x480 while two busy processes hold the cores, and from several threads at once."""
    frames = generation_like(13, 480, 720)
    busy = [
        subprocess.Popen(
            [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<60: pass"]
        )
        for _ in range(2)
    ]
    try:
        hashes = encode_many(frames, tmp_path, "mp4", 3)
        results: list[str] = []

        def worker(k: int) -> None:
            for i in range(2):
                results.append(sha256(write_video(frames, tmp_path / f"t{k}-{i}.mp4", fps=8)))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert len(results) == 4
    assert hashes | set(results) == hashes and len(hashes) == 1
    assert len(encode_many(frames, tmp_path, "webm", 2)) == 1


def test_heap_leftovers_do_not_reach_the_file(tmp_path):
    """glibc fills every new allocation with a different byte in each child: same files."""
    frames = generation_like(13, 96, 160)
    here = in_process_hashes(frames, tmp_path)
    for byte in ("85", "170"):
        assert child_hashes(frames, tmp_path, env={"MALLOC_PERTURB_": byte}) == here


def test_output_does_not_depend_on_the_cpus_simd(tmp_path):
    """FFmpeg's and libvpx's SIMD switched off in a child: the same bytes as with this CPU's.

    x264 needs no such switch: it runs its SSE2 kernels on every x86-64 CPU (cogvx.video).
    """
    frames = generation_like(9, 480, 720, seed=1)
    assert child_hashes(frames, tmp_path, no_simd=True) == in_process_hashes(frames, tmp_path)
    odd = generation_like(5, 34, 50, seed=2)  # not a multiple of 16: padded blocks
    assert child_hashes(odd, tmp_path, no_simd=True) == in_process_hashes(odd, tmp_path)


@pytest.mark.skipif(not video._X86_64, reason="x264 kernel sets are chosen on x86-64 only")
def test_x264_sse2_kernels_equal_its_c_code_but_for_mb_tree(tmp_path):
    """What the SSE2 choice rests on: without mb-tree, x264's SSE2 output is its C code's.

    (mb-tree's SIMD uses an approximate reciprocal; with it on, SSE2 and C differ in a few
    macroblocks' quantisers. This pins the claim to the bundled x264 build.)
    """
    frames = generation_like(9, 480, 720, seed=3)
    sse2 = child_hashes(frames, tmp_path, x264_params="asm=SSE2:mbtree=0")["mp4"]
    c_code = child_hashes(frames, tmp_path, x264_params="asm=0:mbtree=0")["mp4"]
    assert sse2 == c_code
    assert "asm=SSE2" in video.X264_PORTABLE_PARAMS


def test_gif_is_identical_with_and_without_simd(tmp_path):
    frames = generation_like(9, 48, 64)
    data = video.to_uint8_frames(frames)
    a, b, c = (tmp_path / f"{k}.gif" for k in "abc")
    write_video(frames, a, fps=8, fmt="gif")
    write_video(frames, b, fps=8, fmt="gif")
    video._encode_gif(data, c, 8, global_args=["-cpuflags", "0"])
    assert sha256(a) == sha256(b) == sha256(c)


# libavutil's AV_CPU_FLAG_* bits: MMX, MMXEXT, SSE, SSE2, SSE3, SSSE3, CMOV (no SSE4/AVX/AVX-512)
SSSE3_ONLY = 0x1 | 0x2 | 0x8 | 0x10 | 0x40 | 0x80 | 0x1000


def test_frames_read_back_do_not_depend_on_the_cpus_simd(tmp_path):
    """The reader's YUV -> RGB is bit-exact: a child held to SSSE3 reads the same pixels."""
    clip = write_video(generation_like(9, 96, 160), tmp_path / "clip.mp4", fps=8)
    here = read_frames(clip, [0, 4, 8])
    code = (
        "import ctypes, sys, numpy as np, av\n"
        "lib = next(l.split()[-1] for l in open('/proc/self/maps') if 'libavutil' in l)\n"
        f"ctypes.CDLL(lib).av_force_cpu_flags({SSSE3_ONLY})\n"
        "from cogvx.video import read_frames\n"
        "np.save(sys.argv[2], read_frames(sys.argv[1], [0, 4, 8]))\n"
        "np.save(sys.argv[3], read_frames(sys.argv[1], [0, 4, 8], size=(100, 60)))\n"
    )
    out, small = tmp_path / "c.npy", tmp_path / "s.npy"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", code, str(clip), str(out), str(small)]
    subprocess.run(args, check=True, env=env)
    assert np.array_equal(np.load(out), here)
    assert np.array_equal(np.load(small), read_frames(clip, [0, 4, 8], size=(100, 60)))


def test_encoder_settings_do_not_come_from_the_host():
    for fmt in ("mp4", "webm"):
        _, options = video._codec(fmt, 80)
        assert options["threads"] == str(video.ENCODER_THREADS)  # never "auto" / cpu count
