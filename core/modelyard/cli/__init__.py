"""The `modelyard` command: Ollama's verbs. Every verb but `serve` talks to the server over HTTP,
at OLLAMA_HOST like Ollama's CLI. `run` lives in `interactive` (the chat session and its /commands)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from modelyard import __version__
from modelyard.config import base_url
from modelyard.store.local import sha256_file
from modelyard.store.modelfile import ModelfileError, create_request, parse_modelfile

if TYPE_CHECKING:
    import httpx


class ServerError(Exception):
    """The server answered with an error (or could not be reached)."""


class Client:
    """A small HTTP client of the server, streaming NDJSON like the official clients."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        import httpx  # here, not at the top: `modelyard serve` does not need it (about 0.4 s to import)

        self.url = url
        # As ollama-python does with OLLAMA_API_KEY: a server with keys (docs/security.md) asks for one.
        api_key = api_key or os.environ.get("MODELYARD_API_KEY") or os.environ.get("OLLAMA_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url, timeout=None, headers=headers)

    def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            response.read()
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            if response.status_code == 401:
                message += " (set MODELYARD_API_KEY or OLLAMA_API_KEY)"
            raise ServerError(message)

    def get(self, path: str) -> Any:
        import httpx

        try:
            response = self.http.get(path)
        except httpx.ConnectError as exc:
            raise ServerError(f"could not connect to a running modelyard server at {self.url}") from exc
        self._check(response)
        return response.json()

    def request(self, method: str, path: str, body: dict[str, Any]) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, json={**body, "stream": False})
        except httpx.ConnectError as exc:
            raise ServerError(f"could not connect to a running modelyard server at {self.url}") from exc
        self._check(response)
        return response.json() if response.content else None

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def stream(self, path: str, body: dict[str, Any]) -> Generator[dict[str, Any]]:
        import httpx

        try:
            with self.http.stream("POST", path, json={**body, "stream": True}) as response:
                self._check(response)
                for line in response.iter_lines():
                    if line:
                        part = json.loads(line)
                        if "error" in part:
                            raise ServerError(part["error"])
                        yield part
        except httpx.ConnectError as exc:
            raise ServerError(f"could not connect to a running modelyard server at {self.url}") from exc


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.0f} {unit}" if size / scale >= 10 else f"{size / scale:.1f} {unit}"
    return f"{size} B"


def human_ago(stamp: str) -> str:
    moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    seconds = (dt.datetime.now(dt.UTC) - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, scale in (("year", 31536000), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= scale:
            count = int(seconds // scale)
            text = f"{count} {unit}{'s' if count > 1 else ''}"
            return f"{text} from now" if future else f"{text} ago"
    return "now" if not future else "in a moment"


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("    ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())


# --- verbs ----------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from modelyard.api.logs import configure_logging
    from modelyard.api.shutdown import serve_gracefully
    from modelyard.config import Settings
    from modelyard.server import create_app

    try:
        settings = Settings.from_env()
        configure_logging(settings.log_format)
        app = create_app(settings)
    except ValueError as exc:  # a setting that cannot be right: stop before listening, and say which
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    # JSON lines: uvicorn's own loggers then go through the root handler rather than its coloured text.
    log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    serve_gracefully(
        app,
        app.state.drain,
        settings.header_timeout,
        timeout_keep_alive=max(1, round(settings.idle_timeout)),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=args.access_log,
        log_config=log_config,
    )
    return 0


def list_models(client: Client, args: argparse.Namespace) -> int:
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for model in client.get("/api/tags")["models"]:
        rows.append([model["name"], model["digest"][:12], human_size(model["size"]), human_ago(model["modified_at"])])
    print_table(rows)
    return 0


def ps(client: Client, args: argparse.Namespace) -> int:
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for model in client.get("/api/ps")["models"]:
        vram, size = model["size_vram"], model["size"]
        processor = "100% CPU" if vram == 0 else "100% GPU" if vram >= size else f"{100 * vram // size}% GPU"
        expires = dt.datetime.fromisoformat(model["expires_at"].replace("Z", "+00:00"))
        # Kept forever shows as Go's longest duration from now (about 292 years).
        forever = expires - dt.datetime.now(dt.UTC) > dt.timedelta(days=100 * 365)
        until = "Forever" if forever else human_ago(model["expires_at"])
        rows.append(
            [model["name"], model["digest"][:12], human_size(size), processor, str(model["context_length"]), until]
        )
    print_table(rows)
    return 0


def show(client: Client, args: argparse.Namespace) -> int:
    info = client.post("/api/show", {"model": args.model})
    if args.modelfile:
        print(info.get("modelfile", ""))
        return 0
    print_model_info(info, sys.stdout)
    return 0


def print_model_info(info: dict[str, Any], file: TextIO) -> None:
    """`ollama show MODEL` (and `/show info`): the model, its capabilities and parameters."""
    details = info["details"]
    model_info = info.get("model_info", {})
    arch = model_info.get("general.architecture", details.get("family", ""))
    print("  Model", file=file)
    rows = [
        ("architecture", arch),
        ("parameters", details.get("parameter_size", "")),
        ("context length", model_info.get(f"{arch}.context_length", "")),
        ("embedding length", model_info.get(f"{arch}.embedding_length", "")),
        ("quantization", details.get("quantization_level", "")),
    ]
    for label, value in rows:
        if value != "":
            print(f"    {label:<20}{value}", file=file)
    if info.get("capabilities"):
        print("\n  Capabilities", file=file)
        for capability in info["capabilities"]:
            print(f"    {capability}", file=file)
    if info.get("parameters"):
        print("\n  Parameters", file=file)
        for line in info["parameters"].splitlines():
            print(f"    {line}", file=file)


def stop(client: Client, args: argparse.Namespace) -> int:
    client.post("/api/generate", {"model": args.model, "keep_alive": 0})
    return 0


def run(client: Client, args: argparse.Namespace) -> int:
    from modelyard.cli.interactive import run_model

    return run_model(client, args)


class ProgressView:
    """Progress lines of pull, push and create: a bar per layer, other statuses as lines."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def show(self, part: dict[str, Any]) -> None:
        digest = part.get("digest")
        if digest and part.get("total"):
            if digest not in self.tasks:
                self.tasks[digest] = self.progress.add_task(part["status"], total=part["total"])
            self.progress.update(self.tasks[digest], completed=part.get("completed", 0))
        else:
            self.progress.console.print(part["status"], soft_wrap=True, markup=False, highlight=False)


def _stream_progress(client: Client, path: str, body: dict[str, Any]) -> int:
    with ProgressView() as view:
        for part in client.stream(path, body):
            view.show(part)
    return 0


def pull(client: Client, args: argparse.Namespace) -> int:
    return _stream_progress(client, "/api/pull", {"model": args.model, "insecure": args.insecure})


def push(client: Client, args: argparse.Namespace) -> int:
    return _stream_progress(client, "/api/push", {"model": args.model, "insecure": args.insecure})


def copy(client: Client, args: argparse.Namespace) -> int:
    client.post("/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def remove(client: Client, args: argparse.Namespace) -> int:
    for model in args.models:
        client.request("DELETE", "/api/delete", {"model": model})
        print(f"deleted '{model}'")
    return 0


def _upload(client: Client, path: Path) -> str:
    """Upload a local file as a blob unless the server has it; its digest."""
    digest = "sha256:" + sha256_file(path)
    if client.http.head(f"/api/blobs/{digest}").status_code != 200:
        print(f"uploading {path.name}", file=sys.stderr)
        with open(path, "rb") as file:
            client._check(client.http.post(f"/api/blobs/{digest}", content=file))
    return digest


def create(client: Client, args: argparse.Namespace) -> int:
    modelfile_path = Path(args.file)
    try:
        modelfile = parse_modelfile(modelfile_path.read_text())
        body = create_request(modelfile, modelfile_path.parent, lambda path: _upload(client, path))
    except (OSError, ModelfileError) as exc:
        raise ServerError(f"{modelfile_path}: {exc}") from exc
    body["model"] = args.model
    if args.quantize:
        body["quantize"] = args.quantize
    return _stream_progress(client, "/api/create", body)


def conformance(args: argparse.Namespace) -> int:
    try:
        from modelyard_conformance.cli import conformance_main
    except ImportError:  # the suite is its own distribution, an extra of the server
        print("modelyard conformance needs the suite: pip install 'modelyard[conformance]'", file=sys.stderr)
        return 1
    return conformance_main(args.rest)


def keys(args: argparse.Namespace) -> int:
    """`modelyard keys add|list|rm`: the server's keys file, edited in place (the server re-reads it)."""
    from modelyard.api.auth import add_key, read_key_file, remove_key

    path = Path(args.file or os.environ.get("MODELYARD_API_KEYS") or Path.home() / ".modelyard" / "api-keys.json")
    path = path.expanduser()
    try:
        if args.action == "add":
            scopes = sorted(set(args.scope or ["inference"]) | ({"admin"} if args.admin else set()))
            key, entry = add_key(path, args.name, models=args.model or ["*"], scopes=scopes, rate_limit=args.rate)
            print(key)
            print(
                f"added key {entry.name!r} ({', '.join(entry.scopes)}; models {', '.join(entry.models)}) to {path}; "
                "it is shown only once",
                file=sys.stderr,
            )
            if not os.environ.get("MODELYARD_API_KEYS"):
                print(f"serve with MODELYARD_API_KEYS={path} to require keys", file=sys.stderr)
        elif args.action == "rm":
            if not remove_key(path, args.name):
                print(f"Error: no key named {args.name!r} in {path}", file=sys.stderr)
                return 1
            print(f"removed key {args.name!r}")
        else:
            rows = [["NAME", "KEY", "SCOPES", "MODELS", "RATE", "CREATED"]]
            for entry in read_key_file(path).keys:
                rate = f"{entry.rate_limit}/min" if entry.rate_limit else "-"
                row = [entry.name, entry.prefix + "...", ",".join(entry.scopes), ",".join(entry.models), rate]
                rows.append([*row, entry.created_at])
            print_table(rows)
    except (ValueError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelyard", description="A drop-in replacement for Ollama.")
    parser.add_argument("--version", "-v", action="version", version=f"modelyard version is {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="command")

    serve_parser = verbs.add_parser("serve", help="start the server (OLLAMA_HOST, default 127.0.0.1:11434)")
    serve_parser.add_argument("--access-log", action="store_true", help="log every request")
    serve_parser.set_defaults(handler=serve, needs_client=False)

    run_parser = verbs.add_parser("run", help="chat with a model (one prompt, or interactively)")
    run_parser.add_argument("model")
    run_parser.add_argument("prompt", nargs="*")
    run_parser.add_argument("--keepalive", help="how long the model stays loaded (e.g. 5m, 0, -1)")
    run_parser.add_argument("--format", default="", help="response format (e.g. json)")
    run_parser.add_argument("--verbose", action="store_true", help="show timings for the response")
    run_parser.add_argument("--nowordwrap", action="store_true", help="don't wrap words to the next line")
    run_parser.set_defaults(handler=run)

    for verb, aliases, handler, help_text in (
        ("list", ["ls"], list_models, "list the models of the store"),
        ("ps", [], ps, "list the loaded models"),
    ):
        verb_parser = verbs.add_parser(verb, aliases=aliases, help=help_text)
        verb_parser.set_defaults(handler=handler)

    show_parser = verbs.add_parser("show", help="show a model's details")
    show_parser.add_argument("model")
    show_parser.add_argument("--modelfile", action="store_true", help="print the model's Modelfile")
    show_parser.set_defaults(handler=show)

    for verb, handler, help_text in (
        ("pull", pull, "download a model from a registry"),
        ("push", push, "upload a model to a registry"),
    ):
        verb_parser = verbs.add_parser(verb, help=help_text)
        verb_parser.add_argument("model")
        verb_parser.add_argument("--insecure", action="store_true", help="use plain http")
        verb_parser.set_defaults(handler=handler)

    create_parser = verbs.add_parser("create", help="create a model from a Modelfile")
    create_parser.add_argument("model")
    create_parser.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default ./Modelfile)")
    create_parser.add_argument("-q", "--quantize", help="quantize an F16/F32 model, e.g. q4_K_M")
    create_parser.set_defaults(handler=create)

    copy_parser = verbs.add_parser("cp", help="copy a model")
    copy_parser.add_argument("source")
    copy_parser.add_argument("destination")
    copy_parser.set_defaults(handler=copy)

    remove_parser = verbs.add_parser("rm", help="delete models")
    remove_parser.add_argument("models", nargs="+")
    remove_parser.set_defaults(handler=remove)

    conformance_parser = verbs.add_parser(
        "conformance",
        add_help=False,
        help="run the conformance suite (--backend NAME or --base-url URL, --model MODEL)",
    )
    conformance_parser.add_argument("rest", nargs=argparse.REMAINDER)
    conformance_parser.set_defaults(handler=conformance, needs_client=False)

    keys_parser = verbs.add_parser("keys", help="manage the API keys file (MODELYARD_API_KEYS)")
    key_file = argparse.ArgumentParser(add_help=False)
    key_file.add_argument("--file", help="the keys file (default: MODELYARD_API_KEYS, ~/.modelyard/api-keys.json)")
    keys_actions = keys_parser.add_subparsers(dest="action", required=True, metavar="action")
    add_parser = keys_actions.add_parser("add", parents=[key_file], help="make a key and print it (once)")
    add_parser.add_argument("name")
    add_parser.add_argument("--model", action="append", help="a model (or glob) the key may use; repeatable")
    add_parser.add_argument("--scope", action="append", choices=["inference", "admin", "metrics"])
    add_parser.add_argument("--admin", action="store_true", help="may pull, push, create, copy and delete")
    add_parser.add_argument("--rate", type=int, help="requests a minute (429 beyond it)")
    keys_actions.add_parser("list", parents=[key_file], help="list the keys (names and first characters only)")
    rm_parser = keys_actions.add_parser("rm", parents=[key_file], help="remove a key")
    rm_parser.add_argument("name")
    keys_parser.set_defaults(handler=keys, needs_client=False)

    stop_parser = verbs.add_parser("stop", help="unload a model")
    stop_parser.add_argument("model")
    stop_parser.set_defaults(handler=stop)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["conformance"]:  # every other argument belongs to the suite (pytest options too)
        return conformance(argparse.Namespace(rest=argv[1:]))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Flags may come between a prompt's words (`run MODEL --verbose "a prompt"`), as with Ollama's CLI.
    if getattr(args, "verb", None) == "run" and not any(word.startswith("-") for word in extra):
        args.prompt += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "needs_client", True):
        return args.handler(args)
    client = Client(base_url(os.environ.get("OLLAMA_HOST")))
    try:
        return args.handler(client, args)
    except ServerError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.http.close()


if __name__ == "__main__":
    sys.exit(main())
