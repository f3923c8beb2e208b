"""The `modelyard` command: Ollama's verbs. Every verb but `serve` talks to the server over HTTP."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .config import Settings
    from .server import create_app

    settings = Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info", access_log=args.access_log)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelyard", description="A drop-in replacement for Ollama.")
    parser.add_argument("--version", "-v", action="version", version=f"modelyard version {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="command")
    serve_parser = verbs.add_parser("serve", help="start the server (OLLAMA_HOST, default 127.0.0.1:11434)")
    serve_parser.add_argument("--access-log", action="store_true", help="log every request")
    serve_parser.set_defaults(handler=serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
