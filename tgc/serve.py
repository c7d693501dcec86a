"""`tgc serve SITE [--port N]`: a local static server for a bundled site.

Every answer carries Cross-Origin-Opener-Policy: same-origin and
Cross-Origin-Embedder-Policy: require-corp (the page is cross-origin isolated, as
WebAssembly threads and precise timers need), .wasm is served as application/wasm
(streaming compilation), .js/.mjs as JavaScript modules, and nothing is cached, so a
rebuilt bundle shows on reload. Binds 127.0.0.1 unless --host says otherwise.
Not here: TLS, compression, anything a production host does.
"""

from __future__ import annotations

import functools
import http.server
import sys
import threading
from pathlib import Path
from typing import ClassVar

from tgc.errors import TgcError

TYPES = {
    ".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
    ".wgsl": "text/plain; charset=utf-8", ".tg": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8", ".css": "text/css", ".zip": "application/zip",
    ".safetensors": "application/octet-stream", ".png": "image/png", ".svg": "image/svg+xml",
}
HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict] = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}
    quiet = True

    def end_headers(self):
        for k, v in HEADERS.items():
            self.send_header(k, v)
        super().end_headers()

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)


def check_site(site) -> Path:
    p = Path(site)
    if not p.exists():
        raise TgcError(f"site {p} not found (make one with tgc bundle -o {p})")
    if not p.is_dir():
        raise TgcError(f"site {p} is not a directory")
    if not (p / "index.html").exists():
        raise TgcError(f"site {p} has no index.html: not a bundled site (make one with tgc bundle -o {p})")
    return p


def make_server(site, port: int = 8000, host: str = "127.0.0.1", quiet: bool = True) -> http.server.ThreadingHTTPServer:
    """A server for `site` (not yet serving); port 0 picks a free one (server.server_address)."""
    root = check_site(site)
    handler = functools.partial(type("SiteHandler", (Handler,), {"quiet": quiet}), directory=str(root))
    try:
        srv = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise TgcError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    srv.daemon_threads = True
    return srv


def url_of(srv) -> str:
    host, port = srv.server_address[:2]
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"


def serve_in_thread(site, port: int = 0):
    """(server, url) serving in a daemon thread: for tests and scripts; srv.shutdown() stops it."""
    srv = make_server(site, port)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, url_of(srv)


def serve(site, port: int = 8000, host: str = "127.0.0.1", quiet: bool = False) -> int:
    srv = make_server(site, port, host, quiet)
    print(f"serving {Path(site)} at {url_of(srv)} (Ctrl-C stops)", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        srv.server_close()
    return 0
