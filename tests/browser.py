"""A real browser for the tests: Debian's headless Chromium, driven over the DevTools protocol
(a websocket, through the websocket client the worker already uses). It evaluates JavaScript in
the page, waits for what the page shows, and takes screenshots."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any

import requests
import websocket

from tests.debian import installed


class Browser:
    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="cw-chromium-")
        self.proc = subprocess.Popen(
            [
                installed("chromium", "chromium"),
                "--headless=new",
                "--no-sandbox",  # root in a container has no user namespace for the sandbox
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "--window-size=1280,2000",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.port = self._devtools_port()
        self._ids = itertools.count(1)
        self.ws: websocket.WebSocket | None = None

    def _devtools_port(self) -> int:
        """Chromium says where DevTools listens on its stderr, once it is up."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if found:
                return int(found.group(1))
        raise RuntimeError(f"chromium exited ({self.proc.wait()}) before DevTools listened")

    def open(self, url: str) -> Browser:
        pages = requests.get(f"http://127.0.0.1:{self.port}/json/list", timeout=10).json()
        page = next(p for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.send("Page.navigate", url=url)
        return self

    def send(self, method: str, **params: Any) -> dict:
        assert self.ws is not None
        call = next(self._ids)
        self.ws.send(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def eval(self, script: str) -> Any:
        result = self.send("Runtime.evaluate", expression=script, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"the page's JavaScript failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, script: str, timeout: float, what: str) -> Any:
        """The first truthy value of `script`, evaluated until then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(script)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"the page never showed {what} within {timeout:g} s")

    def screenshot(self, path: str) -> str:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def screenshot_dir() -> str:
    """Where a failing page test leaves its screenshot (kept after the run)."""
    folder = os.path.join(tempfile.gettempdir(), "comfy-worker-screenshots")
    os.makedirs(folder, exist_ok=True)
    return folder
