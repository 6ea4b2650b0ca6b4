"""What a prompt that ended left in ComfyUI: its history entry, how it ended, and its outputs,
read from the worker's own output folder (through /view where that fails)."""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.comfy import device_faults
from services.comfy.cleanup import local_path
from services.comfy.client import ComfyClient
from services.core import errors
from services.core.codec import b64
from services.core.config import Settings
from services.core.offload import offload


@dataclass
class Outcome:
    done: bool = False
    error: dict | None = None
    interrupted: bool = False
    on_socket: bool = False  # the end came over the job's first socket, which is still good


class Outputs:
    def __init__(self, settings: Settings, client: ComfyClient) -> None:
        self.settings = settings
        self.client = client

    def entry(self, prompt_id: str) -> dict:
        """The entry is written just before the final message; poll briefly if it lags."""
        for _ in range(40):
            entry = self.client.history(prompt_id)
            if entry is not None:
                return entry
            time.sleep(0.05)
        raise errors.ComfyProtocolError("the prompt ended but ComfyUI has no history entry for it")

    def raise_for(self, outcome: Outcome, entry: dict) -> None:
        """The prompt's failure (what its messages or its history entry say), if it failed."""
        from_history = outcome_of(entry)
        error = outcome.error or from_history.error
        if error:
            message = str(error.get("exception_message", "")).strip().splitlines()
            first = message[0] if message else "failed"
            cause = f"{error.get('exception_type', '?')}: {first}"
            kind = device_faults.kind_of(error) if self.settings.gpu_checks else None
            if kind == device_faults.DEVICE_FAULT:
                raise errors.GpuFault("the GPU failed under the job; its ComfyUI restarts, try again", cause)
            if kind == device_faults.OUT_OF_MEMORY:
                raise errors.GpuOutOfMemory(
                    "the GPU ran out of memory for this job; try a smaller one", cause
                )
            node = f"node {error.get('node_id')} ({error.get('node_type')})"
            raise errors.ExecutionFailed(f"{node}: {first}", cause)
        if outcome.interrupted or from_history.interrupted:
            raise errors.Interrupted("ComfyUI interrupted the prompt")

    def read(self, entry: dict) -> list[dict]:
        """Every output the entry lists, with its bytes as base64."""
        return [self._one(node_id, kind, item) for node_id, kind, item in _output_items(entry)]

    def _one(self, node_id: str, kind: str, item: Any) -> dict:
        if isinstance(item, dict) and "filename" in item:
            data, content_type = self._bytes(item)
            mime = mimetypes.guess_type(item["filename"])[0] or content_type or "application/octet-stream"
            filename = item["filename"]
        else:
            data, mime, filename = str(item).encode("utf-8"), "text/plain", None
        return {
            "node_id": node_id,
            "filename": filename,
            "type": kind,
            "mime": mime,
            "size": len(data),
            "data": offload(b64, data, size=len(data)),
        }

    def _bytes(self, item: dict) -> tuple[bytes, str | None]:
        """From the worker's own output folder (no HTTP round trip); through /view where the
        file is elsewhere or not readable by the worker."""
        path = local_path(self.settings, item)
        if path is not None:
            try:
                size = os.path.getsize(path)
                return offload(_read_file, path, size=size), None
            except OSError:
                pass
        return self.client.view(item["filename"], item.get("subfolder", ""), item.get("type", "output"))


def outcome_of(entry: dict) -> Outcome:
    """How a prompt ended, as its history entry tells."""
    outcome = Outcome(done=True)
    messages = (entry.get("status") or {}).get("messages") or []
    for message in messages:
        if isinstance(message, list) and len(message) == 2:
            if message[0] == "execution_error":
                outcome.error = message[1]
            elif message[0] == "execution_interrupted":
                outcome.interrupted = True
    return outcome


def _read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _output_items(entry: dict) -> Iterator[tuple[str, str, Any]]:
    """(node id, output kind, item) for every file entry and every text a history entry lists,
    whatever the kind is called (`images`, `latents`, `3d`, a custom node's own). Other values
    (flags such as `animated`, camera settings) are no outputs; they stay in `history.outputs`."""
    for node_id, node_output in (entry.get("outputs") or {}).items():
        if isinstance(node_output, dict):
            for kind, items in node_output.items():
                for item in items if isinstance(items, (list, tuple)) else ():
                    if (isinstance(item, dict) and "filename" in item) or isinstance(item, str):
                        yield node_id, kind, item
