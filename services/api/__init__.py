"""The pod API (LAUNCH_MODE=api): a Flask app under gunicorn with gevent workers.

    request -> authorize (API_KEY) -> blueprint route -> the worker's pipeline / job store /
    downloads / ComfyUI control -> JSON (large payloads off the hub)

Guarantees: every failure is `{"error": "<code>: <detail>"}` with its HTTP status, never a
traceback; probes (/healthz, /readyz) are open and never wait on a busy ComfyUI.
"""
