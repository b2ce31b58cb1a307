"""`ikmdn serve-demo`: the browser demo (examples/web) and the shipped models on localhost.

The page is static: it runs the format-2 models with onnxruntime-web, which `npm ci` in
examples/web puts in examples/web/node_modules (nothing is fetched at run time). This module
only serves files, with Python's http.server, from two folders of the source tree:

    /examples/web/...     examples/web/     (the page, its scripts, node_modules/onnxruntime-web)
    /exported_models/...  exported_models/  (the .onnx files)

the same URLs a plain `python -m http.server` at the repository root gives, so the page finds
the models at ../../exported_models/ either way. Anything else is 404; / redirects to the page.
"""

from __future__ import annotations

import errno
import http.server
import signal
import threading
from pathlib import Path
from urllib.parse import urlsplit

import click

from ikmdn.cli._base import cli
from ikmdn.errors import IKMDNError

ROOT = Path(__file__).resolve().parents[2]   # the source tree (editable installs)
PAGE = "/examples/web/"
MODELS = "/exported_models/"
ORT = Path("node_modules") / "onnxruntime-web" / "dist"
DEFAULT_PORT = 8765


def demo_folders(root: Path = ROOT) -> tuple[Path, Path]:
    """(examples/web, exported_models) of the source tree, each checked: an IKMDNError saying
    what to do where the page, onnxruntime-web or the models are missing."""
    web, models = root / "examples" / "web", root / "exported_models"
    if not (web / "index.html").is_file():
        raise IKMDNError(
            f"the web demo is not installed here ({web} does not exist): it ships with the source "
            "tree, not the wheel. Clone the repository, `pip install -e .` there, run `npm ci` in "
            "examples/web, then `ikmdn serve-demo`")
    if not (web / ORT).is_dir():
        raise IKMDNError(f"onnxruntime-web is missing from {web / 'node_modules'}: run `npm ci` in "
                         f"{web} first (it installs the pinned packages of package-lock.json)")
    if not any(models.glob("*.onnx")):
        raise IKMDNError(f"no .onnx models in {models}")
    return web, models


class DemoHandler(http.server.SimpleHTTPRequestHandler):
    """Serves PAGE from `web` and MODELS from `models` (set by make_server); quiet; no caching,
    so a re-exported model shows on reload."""

    web: Path
    models: Path
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".onnx": "application/octet-stream",
                      ".json": "application/json"}

    def send_head(self):
        if urlsplit(self.path).path in ("/", PAGE.rstrip("/")):   # GET and HEAD
            self.send_response(302)
            self.send_header("Location", PAGE)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return super().send_head()

    def translate_path(self, path: str) -> str:
        url = urlsplit(path).path
        for prefix, folder in ((PAGE, self.web), (MODELS, self.models)):
            if url.startswith(prefix):
                self.directory = str(folder)   # SimpleHTTPRequestHandler drops '..' and the like
                return super().translate_path("/" + path[len(prefix):])
        return ""   # anything else: 404 (open("") fails)

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        pass


def make_server(web: Path, models: Path, port: int = DEFAULT_PORT,
                host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server (not yet serving) for the demo on host:port (port 0: a free one)."""
    handler = type("Handler", (DemoHandler,), {"web": Path(web), "models": Path(models)})
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise IKMDNError(f"port {port} is in use: pass another with --port") from None
        raise
    server.daemon_threads = True
    return server


def page_url(server: http.server.HTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}{PAGE}"


def serve_in_thread(web: Path, models: Path, port: int = 0):
    """(server, url) with the server running in a daemon thread; stop with server.shutdown()."""
    server = make_server(web, models, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, page_url(server)


@cli.command("serve-demo")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")
def serve_demo_command(port):
    """Serve the browser demo on localhost: drag a target, see every IK solution.

    The page (examples/web of the source tree; run `npm ci` there once) runs the shipped
    bishop, planar2 and planar3 models in the browser with onnxruntime-web. Ctrl-C stops it.

    Example: ikmdn serve-demo --port 8765
    """
    web, models = demo_folders()
    server = make_server(web, models, port)
    # Ctrl-C and SIGTERM stop it, even where the caller started it with SIGINT ignored (a
    # background job of a non-interactive shell inherits SIG_IGN, which Python keeps).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    click.echo(f"ikmdn web demo: {page_url(server)}  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.server_close()
