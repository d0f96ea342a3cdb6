"""Every cog config is valid for cog 0.23 and statically consistent with the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("cog*.yaml"))
TOP_KEYS = {"build", "run", "image", "environment", "concurrency", "tests", "weights"}
BUILD_KEYS = {"gpu", "cuda", "python_version", "python_requirements", "system_packages", "run"}
FORBIDDEN_ENV = ("PATH=", "PYTHONPATH=", "CUDA_", "PGET_", "HF_ENDPOINT=", "REPLICATE_")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_model_has_a_config():
    names = {p.name for p in CONFIGS}
    expected = {
        "cog.yaml",
        "cog.t2v-2b.yaml",
        "cog.t2v-1.5.yaml",
        "cog.i2v.yaml",
        "cog.i2v-1.5.yaml",
    }
    assert expected <= names, sorted(names)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_keys_and_pins(config):
    data = _load(config)
    assert set(data) <= TOP_KEYS, set(data) - TOP_KEYS
    assert "predict" not in data  # deprecated: run:
    build = data["build"]
    assert set(build) <= BUILD_KEYS, set(build) - BUILD_KEYS
    assert build["gpu"] is True
    assert re.fullmatch(r"3\.(1[0-3])", build["python_version"])
    assert re.fullmatch(r"\d+\.\d+", build["cuda"])
    assert any("pget" in step for step in build.get("run", []))
    reqs = REPO / build["python_requirements"]
    assert reqs.is_file()
    for line in reqs.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", line), f"{reqs.name}: {line}"
    for item in data.get("environment") or []:
        assert "=" in item and not item.startswith(FORBIDDEN_ENV), item


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_run_ref_names_a_runner_class_with_run(config):
    ref = _load(config)["run"]
    rel, cls = ref.split(":")
    tree = ast.parse((REPO / rel).read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert cls in classes, f"{config.name}: {cls} not in {rel}"
    methods = {n.name for n in classes[cls].body if isinstance(n, ast.FunctionDef)}
    assert "run" in methods  # the Go CLI reads run() from the class body itself
