"""Serve a model locally without Docker: write its input schema, then exec coglet.

    python tools/serve.py cog.yaml [--port 5000] [--host 127.0.0.1] [--weights URL_OR_DIR]
    python tools/serve.py cog.i2v.yaml --write-schema-only

The config's `run:` ref (deprecated `predict:` also read) is resolved against the folder holding
the config, as `cog build -f` does. The schema goes to `<workdir>/.cog/openapi_schema.json`, where
coglet's worker reads it (relative to its working directory). The workdir defaults to the config's
folder, like /src in an image; give each server its own `--workdir` to run several at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from cogvx.dev.schema import SchemaError, parse_ref, write_schema

SCHEMA_PATH = Path(".cog") / "openapi_schema.json"


class ConfigError(RuntimeError):
    """The cog config file is missing or lacks what serving needs."""


def read_config(config: str | Path) -> tuple[str, Path, dict[str, str]]:
    """Return (predictor ref, project root, config environment) of a cog.yaml-style file."""
    path = Path(config).resolve()
    if not path.is_file():
        raise ConfigError(f"config {config}: no such file (expected cog.yaml or cog.<model>.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {config}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {config}: expected a mapping at the top level")
    ref = data.get("run")
    if ref is None and isinstance(data.get("predict"), str):
        print(f"serve.py: {config}: `predict:` is deprecated, use `run:`", file=sys.stderr)
        ref = data["predict"]
    if not isinstance(ref, str) or not ref:
        raise ConfigError(
            f"config {config}: no top-level `run:` string "
            '(e.g. run: "predict_t2v/predict.py:Runner")'
        )
    env: dict[str, str] = {}
    for item in data.get("environment") or []:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise ConfigError(f"config {config}: environment entry {item!r} is not KEY=VALUE")
        env[key] = value
    try:
        rel, _ = parse_ref(ref)
    except ValueError as exc:
        raise ConfigError(f"config {config}: {exc}") from exc
    if not (path.parent / rel).is_file():
        raise ConfigError(f"config {config}: run: {ref!r} names {rel}, which does not exist")
    return ref, path.parent, env


def coglet_env(
    ref: str, root: Path, port: int, config_env: dict[str, str], weights: str | None
) -> dict[str, str]:
    """Environment for coglet: config `environment:` first, then the caller's, then the stub."""
    rel, cls = parse_ref(ref)
    env = {**config_env, **os.environ}
    env["COG_PREDICT_TYPE_STUB"] = f"{(root / rel).resolve()}:{cls}"
    env["PORT"] = str(port)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    # coglet spawns its worker as `python` from PATH: make that this interpreter (a venv that
    # was not activated, e.g. `.venv/bin/python tools/serve.py`, would otherwise lose coglet).
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH")) if p)
    if weights is not None:
        env["COG_WEIGHTS"] = weights
    return env


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the schema, then replace this process with coglet."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="cog.yaml or cog.<model>.yaml")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5000")))
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0: all)")
    parser.add_argument("--workdir", type=Path, help="coglet's cwd (default: the config's folder)")
    parser.add_argument("--weights", help="sets COG_WEIGHTS, passed to setup(weights)")
    parser.add_argument("--upload-url", help="PUT file outputs to URL/<name> (no data URIs)")
    parser.add_argument(
        "--write-schema-only", action="store_true", help="write the schema, print its path, exit"
    )
    args = parser.parse_args(argv)
    try:
        ref, root, config_env = read_config(args.config)
        workdir = (args.workdir or root).resolve()
        schema = write_schema(ref, root, workdir / SCHEMA_PATH)
    except (ConfigError, SchemaError, ValueError) as exc:
        print(f"serve.py: error: {exc}", file=sys.stderr)
        return 2
    if args.write_schema_only:
        print(schema)
        return 0
    env = coglet_env(ref, root, args.port, config_env, args.weights)
    cmd = [sys.executable, "-m", "cog.server.http", "--host", args.host]
    if args.upload_url:
        cmd += ["--upload-url", args.upload_url]
    print(f"serve.py: {ref} on http://{args.host}:{args.port} (cwd {workdir})", file=sys.stderr)
    sys.stderr.flush()
    os.chdir(workdir)
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
