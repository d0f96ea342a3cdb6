"""Pack a weights folder into an uncompressed tarball with a sha256 manifest (for COG_WEIGHTS).

python tools/pack_weights.py ./CogVideoX-5b weights.tar
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

from cogvx.weights.pack import pack_folder
from cogvx.weights.tarcheck import MANIFEST_NAME


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder to pack (symlinks are followed)")
    parser.add_argument("out", type=Path, help="tarball to write, e.g. weights.tar")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = pack_folder(args.folder, args.out, log=lambda _: None)
    except ValueError as e:
        parser.error(str(e))
    with tarfile.open(out) as tf:
        member = tf.extractfile(MANIFEST_NAME)
        assert member is not None
        files = json.load(member)["files"]
    size = sum(f["size"] for f in files.values())
    print(
        f"packed {len(files)} files ({size / 1e9:.2f} GB) from {args.folder} into {out} "
        f"({out.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f}s"
    )
    print(
        "host it on any HTTPS server that answers Range requests (e.g. a bucket, a CDN or "
        f"replicate.delivery), then run the model with COG_WEIGHTS=https://.../{out.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
