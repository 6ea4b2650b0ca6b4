"""A loopback HTTP file server for download tests: Range support, and misbehaving routes.

/file/<name>       the file, with Range support (206 + Content-Range)
/disk/<name>       a file of `on_disk` (name -> path) sent with sendfile, as nginx serves one;
                   Range support
/slow/<name>       the same, paced at `rate` bytes/s
/drop/<name>       the first response sends half the body and closes; later ones behave
/lie/<name>        announces more bytes than it sends, every time
/redirect/<path>   302 to the `redirect_to` URL
/<repo>/resolve/<revision>/<path>   Hugging Face's resolve route over `files` (GET and HEAD, with the
                   commit and ETag headers huggingface_hub reads)
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.on_disk: dict[str, str] = {}
        self.requests: list[dict] = []  # path, range header, bytes sent, auth
        self.rate = 2 * 1024 * 1024
        self.redirect_to = ""
        self.dropped: set[str] = set()
        self.etags: dict[str, str] = {}
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def etag(self, name: str) -> str:
        if name not in self.etags:
            self.etags[name] = hashlib.sha256(self.files[name]).hexdigest()
        return self.etags[name]

    def handle_error(self, request: object, client_address: object) -> None:
        return  # clients that hang up mid-body (the tests' dropped connections) are expected

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bytes_sent(self, name: str) -> int:
        return sum(r["sent"] for r in self.requests if r["path"].endswith("/" + name))

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        return

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        record = {
            "path": self.path,
            "range": self.headers.get("Range"),
            "auth": self.headers.get("Authorization"),
            "sent": 0,
        }
        self.server.requests.append(record)
        hf = re.match(r"^/(.+)/resolve/([^/]+)/(.+)$", self.path)
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind == "disk":
            self._sendfile(self.server.on_disk[name], record, head)
            return
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if hf:
            kind, name = "file", f"{hf.group(1)}@{hf.group(2)}/{hf.group(3)}"
        data = self.server.files.get(name)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = 0, None
        match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
        if match and kind != "lie":
            start = int(match.group(1))
            end = int(match.group(2)) + 1 if match.group(2) else None
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:end]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) + (1000 if kind == "lie" else 0)))
        self.send_header("Accept-Ranges", "bytes")
        if hf:  # what huggingface_hub's own client reads from the Hub
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("ETag", f'"{self.server.etag(name)}"')
        self.end_headers()
        if head:
            return
        if kind == "drop" and name not in self.server.dropped:
            self.server.dropped.add(name)
            body = body[: len(body) // 2]
        step = 64 * 1024
        for offset in range(0, len(body), step):
            chunk = body[offset : offset + step]
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
            record["sent"] += len(chunk)
            if kind == "slow":
                time.sleep(len(chunk) / self.server.rate)
        if kind in ("drop", "lie"):
            self.close_connection = True

    def _sendfile(self, path: str, record: dict, head: bool) -> None:
        size = os.path.getsize(path)
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        start = int(match.group(1)) if match else 0
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if head:
            return
        self.wfile.flush()
        with open(path, "rb") as handle:
            record["sent"] = self.connection.sendfile(handle, start, size - start)
