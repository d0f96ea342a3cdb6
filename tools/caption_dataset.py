"""Caption a dataset of clips with CogVLM2-Caption on Ray Data (resumable JSONL / Parquet output).

Laptop (a local Ray instance, one CPU actor or one actor per GPU):
    python tools/caption_dataset.py clips/ captions.jsonl --weights ./cogvlm2-caption
Cluster (Ray reads RAY_ADDRESS itself; one actor per GPU):
    RAY_ADDRESS=ray://head:10001 python tools/caption_dataset.py list.txt out.parquet \
        --weights https://host/cogvlm2-caption.tar --gpus 8

Rerunning the same command resumes: clips captioned in OUTPUT are skipped, clips whose row is an
error are tried again. A rerun with other settings (prompt, strategy, max new tokens, weights),
or while another job writes OUTPUT, is refused. Relative paths in a list file are relative to
the list file's folder. Exit status 0 when the job ran (bad clips are rows with an error), 2 for
bad arguments or input, 1 when it could not run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cogvx.cogvlm2.captioner import DEFAULT_PROMPT
from cogvx.cogvlm2.sampling import STRATEGIES
from cogvx.errors import InputError, SetupError
from cogvx.services.caption_dataset import CLIPS_PER_CALL, CaptionJobError, DatasetJob, run_job


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("input", help="a folder (recursive), a glob, or a text file of paths/URLs")
    p.add_argument("output", type=Path, help="captions.jsonl or captions.parquet")
    p.add_argument("--weights", required=True, help="like COG_WEIGHTS: folder, .tar or https URL")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--strategy", default="chat", choices=STRATEGIES)
    p.add_argument("--max-new-tokens", type=int, default=2048)
    batch = "clips per model batch (default: from free GPU memory; 4 on CPU)"
    p.add_argument("--batch-size", type=int, default=None, help=batch)
    per_call = "clips per actor call: the unit written to OUTPUT as it completes"
    p.add_argument("--clips-per-call", type=int, default=CLIPS_PER_CALL, help=per_call)
    p.add_argument("--gpus", type=int, default=0, help="actors with one GPU each (0: one on CPU)")
    p.add_argument("--readers", type=int, default=2, help="decoding threads per actor")
    p.add_argument("--ordered", action="store_true", help="OUTPUT in input order")
    p.add_argument("--verbose", action="store_true", help="the actors' per-clip log lines")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: the exit status."""
    args = parse_args(argv)
    job = DatasetJob(
        inputs=args.input, output=args.output, weights=args.weights, prompt=args.prompt,
        strategy=args.strategy, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        clips_per_call=args.clips_per_call, gpus=args.gpus, readers=args.readers,
        ordered=args.ordered, verbose=args.verbose, address=args.address, num_cpus=args.num_cpus,
    )  # fmt: skip
    try:
        run_job(job)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except (SetupError, CaptionJobError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
