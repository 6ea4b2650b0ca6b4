"""The container's HEALTHCHECK: healthy when the mode's program runs (and, in pod mode, the
API answers). ComfyUI's own health is the watchdog's job: a slow model load is not a sick
container."""

from __future__ import annotations

import sys
import urllib.request

from services.comfy import supervisor_state
from services.core import config


def main() -> int:
    try:
        settings = config.load()
    except config.ConfigError:
        return 1
    program = "api" if settings.launch_mode == "api" else "handler"
    if supervisor_state.process_state(settings.supervisor_socket, program) != "RUNNING":
        return 1
    if settings.launch_mode == "api":
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{settings.api_port}/healthz", timeout=5
            ) as response:
                return 0 if response.status == 200 else 1
        except OSError:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
