"""HTTP side of ComfyUI's protocol (PROTOCOL.md section 3): the calls the worker makes."""

from __future__ import annotations

import requests

from services import errors


class ComfyClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = requests.Session()

    def ready(self, timeout: float = 2.0) -> bool:
        try:
            return self.http.get(f"{self.base_url}/system_stats", timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def _unreachable(self, exc: Exception) -> errors.WorkerError:
        return errors.ComfyRestarted(f"ComfyUI stopped answering ({type(exc).__name__})")
