"""gunicorn settings for the pod API.

No `preload_app` and no imports of requests/urllib3 here: gevent must patch the worker before
they load (docs/runtime.md). `timeout` is the worker heartbeat, not a request limit.
"""

import subprocess
import sys

from services.core.config import load_or_exit as _load_settings
from services.core.logs import gunicorn_logging as _gunicorn_logging

_settings = _load_settings("api")
_CHILD_EXIT_TIMEOUT_S = 20  # ComfyUI and Redis calls, each with its own timeout

bind = f"0.0.0.0:{_settings.api_port}"
worker_class = "gevent"
workers = 1
worker_connections = 1000
timeout = 30
graceful_timeout = 4  # in-flight requests on SIGTERM; the container must stop within 10 s
keepalive = 5
control_socket_disable = True
accesslog = None if _settings.log_silent else "-"
errorlog = "-"
loglevel = "info"
if _settings.log_format == "json":  # its error and access logs in the worker's schema
    logconfig_dict = _gunicorn_logging("json")


def worker_exit(_server: object, worker: object) -> None:
    """On SIGTERM: async jobs taken from the fleet's queue but not started go back to it, and
    the spans not yet exported leave."""
    app = getattr(worker, "wsgi", None)
    jobs = getattr(app, "extensions", {}).get("comfy_worker_jobs")
    if jobs is not None:
        jobs.close()
    from services.core import tracing  # imported in the worker, after gevent patched it

    tracing.close()  # the spans still waiting for their export


def child_exit(server: object, worker: object) -> None:
    """A worker that died (killed, crashed, past its heartbeat): what it left in ComfyUI and in
    the fleet's queue is handed on before the next worker starts (services/api/worker_died.py).
    Not while the master stops: the worker's own `worker_exit` handed back its jobs then."""
    if not getattr(server, "LISTENERS", None):
        return
    command = [sys.executable, "-m", "services.api.worker_died", str(getattr(worker, "pid", 0))]
    try:
        subprocess.run(command, timeout=_CHILD_EXIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        server.log.warning("could not hand on what the dead worker left: %s", type(exc).__name__)
