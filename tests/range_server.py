"""A small HTTP file server with byte ranges, as an object store serves a bucket.

``python tests/range_server.py ROOT`` serves ROOT on a free port of 127.0.0.1, prints the port
on one line and serves until killed. The standard library's ``http.server`` ignores ``Range``
headers; object stores (S3, GCS) and fsspec's HTTP filesystem rely on them, so this handler
answers them with 206 Partial Content. Requests and bytes are counted, served at
``GET /_stats`` (JSON), so a test can see that reads were ranged. While a file ``_fail_ranges``
exists in ROOT, every ranged request is answered 500, as a failing store would.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_stats: dict[str, int] = {"requests": 0, "ranged": 0, "bytes": 0}
_lock = threading.Lock()


class RangeHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path == "/_stats":
            body = json.dumps(_stats).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        match = _RANGE.match(self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if match is not None and os.path.exists(os.path.join(self.directory, "_fail_ranges")):
            self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR, "failing on purpose")
            return
        if match is None or not os.path.isfile(path):
            with _lock:
                _stats["requests"] += 1
            super().do_GET()
            return
        size = os.path.getsize(path)
        first, last = match.groups()
        if first == "":  # the last N bytes
            start, stop = max(0, size - int(last)), size
        else:
            start, stop = int(first), min(size, int(last) + 1 if last else size)
        if start >= size or stop <= start:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(stop - start)
        with _lock:
            _stats["requests"] += 1
            _stats["ranged"] += 1
            _stats["bytes"] += len(body)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


def main() -> None:
    root = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=root))
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
