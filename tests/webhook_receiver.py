"""A webhook receiver for the tests: a real HTTP server on a free port that records every call
and verifies it with the `standardwebhooks` library, as an integrator would.

Each path answers from a script of its own: a list of what to do on the 1st, 2nd, ... call
(the last one repeats): an HTTP status, `("redirect", path)`, or `("hang", seconds)`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.stack import free_port


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: str
    at: float
    verified: Any = None  # the body as the library verified it, or the error it raised
    status: int | None = None


@dataclass
class Receiver:
    secrets: list[str]
    scripts: dict[str, list] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                call = Call(self.path, dict(self.headers.items()), body, time.time())
                call.verified = receiver.verify(body, call.headers)
                with receiver.lock:
                    receiver.calls.append(call)
                    script = receiver.scripts.get(self.path, [200])
                    action = script[
                        min(len([c for c in receiver.calls if c.path == self.path]) - 1, len(script) - 1)
                    ]
                if isinstance(action, tuple) and action[0] == "hang":
                    time.sleep(action[1])
                    action = 200
                if isinstance(action, tuple) and action[0] == "redirect":
                    call.status = 302
                    self.send_response(302)
                    self.send_header("Location", action[1])
                else:
                    call.status = action
                    self.send_response(action)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def verify(self, body: str, headers: dict[str, str]) -> Any:
        """The body as every secret verifies it (each one signs), or the error of the first that fails."""
        try:
            verified = [Webhook(secret).verify(body, headers) for secret in self.secrets]
        except WebhookVerificationError as exc:
            return exc
        return verified[0]

    def to(self, path: str) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.path == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
