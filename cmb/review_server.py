"""``cmb review DERIVATIVES``: serve a workflow output folder to the browser, read-only.

Subject pages opened from disk cannot read NIfTI files (``file://`` forbids it), so
layers over the page's embedding budget (:mod:`cmb.report.viewer`) are read from the
derivatives folder through this small HTTP server:

    cmb review demo/derivatives/cmb          # prints http://127.0.0.1:<port>/cohort/cmb_report.html

- It binds the loopback address 127.0.0.1 on a random free port; another address
  needs ``--allow-remote`` (the folder holds patient images).
- It answers GET and HEAD only (405 otherwise) and serves nothing outside the folder:
  a path that leaves it (``..``, encoded or not, or a symbolic link pointing out) is
  404, as are hidden files (``.snakemake``, temporaries).
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import posixpath
import sys
import urllib.parse
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["ReviewHandler", "make_server", "build_parser", "run"]

LOOPBACK = "127.0.0.1"


class ReviewHandler(SimpleHTTPRequestHandler):
    """Static, read-only files of one folder; nothing outside it."""

    server_version = "cmb-review"
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".gz": "application/gzip",
        ".tsv": "text/tab-separated-values",
        ".js": "text/javascript",
    }

    def _inside(self) -> Path | None:
        root = Path(self.directory).resolve()
        raw = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if any(p == ".." or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
            return None
        target = (root / posixpath.join(*parts)).resolve() if parts else root
        if target != root and root not in target.parents:
            return None  # a symbolic link out of the folder
        return target

    def send_head(self):
        target = self._inside()
        if target is None or not target.exists():
            self.send_error(HTTPStatus.NOT_FOUND, "not in the served folder")
            return None
        return super().send_head()

    def list_directory(self, path):
        self.send_error(HTTPStatus.NOT_FOUND, "no directory listings")
        return None

    def _refuse(self):
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)


def make_server(
    folder,
    host: str = LOOPBACK,
    port: int = 0,
    *,
    allow_remote: bool = False,
    verbose: bool = False,
) -> ThreadingHTTPServer:
    """A server of ``folder`` (not started); refuses a non-loopback ``host`` without ``allow_remote``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"{folder}: not a folder (give the workflow's output_dir, e.g. demo/derivatives/cmb)"
        )
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise ValueError(
            f"--host {host} is not a loopback address: the folder would be readable from the network; "
            "add --allow-remote to mean it"
        )
    server = ThreadingHTTPServer(
        (host, port), functools.partial(ReviewHandler, directory=str(folder.resolve()))
    )
    server.verbose = verbose
    return server


def build_parser(parser=None):
    p = parser or argparse.ArgumentParser(prog="cmb review", description=__doc__.splitlines()[0])
    p.add_argument("derivatives", type=Path, help="the workflow's output folder")
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=0, help="port (default: a random free one)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def run(args) -> int:
    try:
        server = make_server(
            args.derivatives,
            args.host,
            args.port,
            allow_remote=args.allow_remote,
            verbose=args.verbose,
        )
    except (ValueError, OSError) as e:
        print(f"cmb review: error: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    start = (
        "cohort/cmb_report.html"
        if (args.derivatives / "cohort" / "cmb_report.html").is_file()
        else ""
    )
    print(
        f"serving {os.path.abspath(args.derivatives)} read-only at http://{host}:{port}/{start} (Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
