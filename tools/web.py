"""A local web page for a CogVideoX model: prompt, image, the main inputs, the video, the logs.

    python tools/web.py --config cog.yaml --weights URL_OR_DIR   # loads the model itself
    python tools/web.py --server http://127.0.0.1:5000            # a running Cog server

With --config the page starts the model as a Cog server of its own (tools/serve.py, in the
repository's .venv, or --server-python) and stops it on exit; either way the form is read from
the server's schema. Run it from the web environment: .venv-web/bin/python (tools/setup_env.sh).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from cogvx.webui.client import READY, CogClient, ServerError
from cogvx.webui.form import FormError, fields_from_openapi, output_is_file
from cogvx.webui.local_server import LocalServer
from cogvx.webui.page import Page, build_page, launch


def main(argv: list[str] | None = None) -> int:
    """Serve the page until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="cog config to run locally (cog.yaml, cog.i2v.yaml, ...)")
    where.add_argument("--server", help="URL of a running Cog server")
    parser.add_argument("--weights", help="with --config: COG_WEIGHTS (tarball URL or folder)")
    parser.add_argument("--server-python", help="with --config: the model environment's python")
    parser.add_argument("--host", default="127.0.0.1", help="page address (default loopback)")
    parser.add_argument("--port", type=int, default=7860, help="page port (default 7860)")
    parser.add_argument("--title", help="page title (default: from the config or server)")
    args = parser.parse_args(argv)
    # SIGTERM ends the page like Ctrl-C does, so `finally` stops the model server it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    local = None
    try:
        if args.config:
            local = LocalServer(args.config, args.weights, args.server_python)
            print(f"web.py: starting {args.config} (log: {local.log_path})", file=sys.stderr)
            client = local.start()
            print(f"web.py: model server on {client.url}", file=sys.stderr)
        else:
            client = CogClient(args.server)
            status = client.wait_ready(timeout=60).get("status")
            if status != READY:
                raise ServerError(f"{args.server}: the server is {status}, not {READY}")
        schema = client.openapi()
        fields = fields_from_openapi(schema)
        out_dir = Path(tempfile.mkdtemp(prefix="cogvx-web-"))
        where = Path(args.config).name if args.config else urlsplit(args.server).netloc
        title = args.title or f"CogVideoX: {where}"
        demo = build_page(Page(client, fields, out_dir, output_is_file(schema)), title)
        print(f"web.py: page on http://{args.host}:{args.port}", file=sys.stderr)
        launch(demo, args.host, args.port, out_dir)
    except (ServerError, FormError, ValueError) as exc:
        print(f"web.py: {exc}", file=sys.stderr)
        return 1
    finally:
        if local is not None:
            local.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
