"""Tiny Runner with one input of every kind the project uses; only for serving tests."""

import json
import os
import tempfile
import time
from typing import Optional

from cog import BaseRunner, Input, Path

SIZES = ["small", "large"]


class Runner(BaseRunner):
    """Echoes its inputs and the weights it was set up with into a small JSON file."""

    label = "base"

    def setup(self, weights: Optional[str] = None) -> None:
        """Remember the weights coglet passed (from COG_WEIGHTS) and one config env variable."""
        if weights is not None and str(weights).startswith("fail:"):
            raise RuntimeError(f"weights {weights}: cannot be loaded (sample setup failure)")
        self.weights = weights
        self.greeting = os.environ.get("SAMPLE_GREETING")

    def run(
        self,
        prompt: str = Input(description="Text prompt; 'fail' raises ValueError."),
        seed: Optional[int] = Input(default=None, description="Random seed; empty picks one."),
        steps: int = Input(default=4, ge=1, le=50, description="Number of steps."),
        guidance_scale: float = Input(default=6.0, ge=0.0, le=20.0, description="Guidance."),
        offset: int = Input(default=0, ge=-5, le=5, description="Signed offset."),
        size: str = Input(default="small", choices=SIZES, description="Output size."),
        fps: int = Input(default=8, choices=[8, 16], description="Frames per second."),
        loop: bool = Input(default=False, description="Loop the output."),
        image: Optional[Path] = Input(default=None, description="Optional input image."),
    ) -> Path:
        """Validate like a real predictor, then write the inputs to out.json."""
        if prompt == "fail":
            raise ValueError("prompt: 'fail' is not allowed; use any other text")
        if prompt.startswith("sleep:"):  # lets tests cancel or overlap a running prediction
            print(f"sleeping {prompt[6:]} s", flush=True)  # run() has started: tests wait for it
            deadline = time.monotonic() + float(prompt[6:])
            while time.monotonic() < deadline:
                time.sleep(0.02)
        record = {
            "label": self.label,
            "weights": self.weights,
            "greeting": self.greeting,
            "cwd": os.getcwd(),
            "prompt": prompt,
            "seed": seed,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "offset": offset,
            "size": size,
            "fps": fps,
            "loop": loop,
            "image_bytes": None if image is None else len(Path(image).read_bytes()),
        }
        out = Path(tempfile.mkdtemp(prefix="sample_runner_")) / "out.json"
        out.write_text(json.dumps(record))
        return out


class RunnerAlt(Runner):
    """Same inputs as Runner (inherited run()); only the label differs."""

    label = "alt"
