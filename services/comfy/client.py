"""ComfyUI's HTTP and websocket protocol (docs/comfyui-protocol.md): one method per call.

Every call has a timeout; a ComfyUI that does not answer becomes a `WorkerError`, never a hang.
HTTP goes over the standard library's http.client on kept-alive connections: a job makes a few
calls to a server on localhost, where a general client's per-call work (environment lookups,
URL parsing, adapters) cost more CPU than the call itself.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import websocket

from services.core import errors

CONTROL_TIMEOUT_S = 5.0  # queue, interrupt, history: small answers
TRANSFER_TIMEOUT_S = 60.0  # /view downloads


class ComfyUnreachable(errors.ComfyRestarted):
    """The HTTP connection failed: ComfyUI is down, restarting or hung."""


class SocketLost(ComfyUnreachable):
    """The websocket broke: ComfyUI died, restarted or dropped it."""


class Socket:
    """One client id's websocket, its errors turned into ours."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self._ws = ws

    def receive(self) -> str | None:
        """The next text message; None when none came within the receive timeout."""
        try:
            raw = self._ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except UnicodeDecodeError:  # a text frame that is not UTF-8 (validation is ours: see open_socket)
            return ""
        except (OSError, websocket.WebSocketException) as exc:
            raise SocketLost(f"ComfyUI's websocket broke ({type(exc).__name__})") from None
        return raw if isinstance(raw, str) else ""

    def close(self) -> None:
        self._ws.close()


class Sockets:
    """The websocket of a job that ended normally stays open for the next one: its messages
    carry prompt ids, so what arrives late for an earlier prompt is ignored."""

    SPARE_MAX_AGE_S = 30.0  # an idle socket is read by nobody: past this, open a fresh one

    def __init__(self, client: ComfyClient, recv_timeout: float) -> None:
        self.client = client
        self.recv_timeout = recv_timeout
        self._spare: tuple[str, Socket, float] | None = None  # client id, socket, since
        self._lock = threading.Lock()

    def take(self) -> tuple[str, Socket]:
        """(client id, socket): the one kept, or a new one."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            client_id, ws, since = spare
            if time.monotonic() - since < self.SPARE_MAX_AGE_S:
                return client_id, ws
            ws.close()
        client_id = uuid.uuid4().hex
        return client_id, self.client.open_socket(client_id, self.recv_timeout)

    def give_back(self, client_id: str, ws: Socket, keep: bool) -> None:
        """Keep a socket that saw its prompt to the end for the next job; close any other."""
        with self._lock:
            if keep and self._spare is None:
                self._spare, ws = (client_id, ws, time.monotonic()), None
        if ws is not None:
            ws.close()


@dataclass(frozen=True)
class Reply:
    status_code: int
    content: bytes
    content_type: str | None

    def json(self) -> Any:
        return json.loads(self.content)


class Connections:
    """Kept-alive HTTP/1.1 connections to one server, each used by one call at a time. One the
    server closed while it was idle is readable (its end of file) and is not used again; one it
    closed as the request went out (the end of file still on its way) is replaced once: a
    server that closes a kept-alive connection has not read what arrives on it."""

    MAX_IDLE_S = 20.0  # well below the keep-alive time of ComfyUI's server (aiohttp: 75 s)

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> Reply:
        """Raises OSError or http.client.HTTPException when the server could not be asked."""
        conn, reused = self._take(timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            reply = Reply(response.status, response.read(), response.getheader("Content-Type"))
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if not reused:
                raise
            return self.request(method, path, body, headers, timeout)  # on a new connection
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append((conn, time.monotonic()))
        return reply

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """A connection, and whether it was used before."""
        now = time.monotonic()
        while True:
            with self._lock:
                conn, since = self._idle.pop() if self._idle else (None, now)
            if conn is None:
                return http.client.HTTPConnection(self.host, self.port, timeout=timeout), False
            if now - since < self.MAX_IDLE_S and conn.sock is not None and not _readable(conn.sock):
                conn.timeout = timeout
                conn.sock.settimeout(timeout)
                return conn, True
            conn.close()


def _readable(sock: Any) -> bool:
    """An idle kept-alive socket that is readable was closed by the server (or is out of step)."""
    return bool(select.select([sock], [], [], 0)[0])


class ComfyClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = Connections(self.base_url)

    # --- plumbing ----------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        timeout: float = CONTROL_TIMEOUT_S,
        json_body: Any = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        body, headers = None, {}
        if json_body is not None:
            body, headers = json.dumps(json_body).encode(), {"Content-Type": "application/json"}
        target = f"{path}?{urlencode(params)}" if params else path
        try:
            return self.http.request(method, target, body, headers, timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise ComfyUnreachable(f"ComfyUI did not answer {method} {path} ({type(exc).__name__})") from None

    @staticmethod
    def _json(response: Reply, what: str) -> Any:
        if response.status_code != 200:
            raise errors.ComfyProtocolError(f"{what} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise errors.ComfyProtocolError(f"{what} answered with a body that is not JSON") from None

    # --- calls ---------------------------------------------------------------------------------
    def ready(self, timeout: float = 2.0) -> bool:
        try:
            return self._call("GET", "/system_stats", timeout=timeout).status_code == 200
        except ComfyUnreachable:
            return False

    def submit(
        self, prompt: dict, client_id: str, prompt_id: str, timeout: float, extra_data: dict | None = None
    ) -> dict:
        """POST /prompt; a 400 (validation) becomes `WorkflowValidationFailed` with readable node
        errors. A 200 may still carry `node_errors`: ComfyUI then queued only the valid outputs.
        ComfyUI lists model folders while it validates, which on a cold network volume is slow,
        hence a limit of its own."""
        response = self._call(
            "POST",
            "/prompt",
            timeout=timeout,
            json_body={
                "prompt": prompt,
                "client_id": client_id,
                "prompt_id": prompt_id,
                **({"extra_data": extra_data} if extra_data else {}),
            },
        )
        if response.status_code == 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            node_errors = body.get("node_errors") if isinstance(body, dict) else None
            raise errors.WorkflowValidationFailed(describe_validation_error(body), node_errors)
        return self._json(response, "POST /prompt")

    def history(self, prompt_id: str) -> dict | None:
        """The history entry, or None while the prompt is unknown, queued or running."""
        body = self._json(self._call("GET", f"/history/{prompt_id}"), "GET /history")
        return body.get(prompt_id) if isinstance(body, dict) else None

    def delete_history(self, prompt_ids: list[str]) -> None:
        self._call("POST", "/history", json_body={"delete": prompt_ids})

    def clear_history(self) -> None:
        self._call("POST", "/history", json_body={"clear": True})

    def queue(self) -> dict:
        return self._json(self._call("GET", "/queue"), "GET /queue")

    def delete_from_queue(self, prompt_id: str) -> None:
        self._call("POST", "/queue", json_body={"delete": [prompt_id]})

    def clear_queue(self) -> None:
        """Every prompt waiting in ComfyUI's queue out of it (the running one runs on)."""
        self._call("POST", "/queue", json_body={"clear": True})

    def free(self) -> None:
        """Unload models and free memory (ComfyUI does it between prompts)."""
        response = self._call("POST", "/free", json_body={"unload_models": True, "free_memory": True})
        if response.status_code != 200:
            raise ComfyUnreachable(f"POST /free answered HTTP {response.status_code}")

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop `prompt_id` if it runs; without one, whatever runs."""
        self._call("POST", "/interrupt", json_body={"prompt_id": prompt_id} if prompt_id else {})

    def node_info(self, class_type: str) -> dict:
        body = self._json(self._call("GET", f"/object_info/{class_type}"), "GET /object_info")
        return body.get(class_type, {}) if isinstance(body, dict) else {}

    def view(self, filename: str, subfolder: str, folder_type: str) -> tuple[bytes, str | None]:
        params = {"filename": filename, "subfolder": subfolder, "type": folder_type}
        response = self._call("GET", "/view", timeout=TRANSFER_TIMEOUT_S, params=params)
        if response.status_code != 200:
            raise errors.ComfyProtocolError(f"GET /view of an output answered HTTP {response.status_code}")
        return response.content, response.content_type

    def open_socket(self, client_id: str, recv_timeout: float) -> Socket:
        """The websocket for one client id, opened before the prompt is posted."""
        parts = urlsplit(self.base_url)
        url = f"ws://{parts.netloc}/ws?clientId={client_id}"
        try:
            # websocket-client's own UTF-8 check is pure Python, byte by byte: decoding checks too
            ws = websocket.create_connection(
                url, timeout=CONTROL_TIMEOUT_S, suppress_origin=True, skip_utf8_validation=True
            )
        except (OSError, websocket.WebSocketException) as exc:
            raise ComfyUnreachable(f"ComfyUI's websocket did not open ({type(exc).__name__})") from None
        ws.settimeout(recv_timeout)
        return Socket(ws)


def describe_validation_error(body: Any) -> str:
    """One readable line from ComfyUI's 400: node id, class and message for each failing node."""
    if not isinstance(body, dict):
        return "ComfyUI refused the workflow"
    node_errors = body.get("node_errors") or {}
    parts = []
    if isinstance(node_errors, dict):
        for node_id, entry in node_errors.items():
            if not isinstance(entry, dict):
                continue
            messages = []
            for err in entry.get("errors") or []:
                if isinstance(err, dict):
                    detail = err.get("details")
                    messages.append(
                        f"{err.get('message', 'invalid')}: {detail}" if detail else str(err.get("message"))
                    )
            parts.append(
                f"node {node_id} ({entry.get('class_type', '?')}): {'; '.join(messages) or 'invalid'}"
            )
    if parts:
        return "; ".join(parts)
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    message, details = error.get("message", "ComfyUI refused the workflow"), error.get("details")
    return f"{message} ({details})" if details else str(message)
