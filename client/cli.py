"""The `comfy-worker` command: run a workflow file on a pod or a RunPod endpoint and save its
outputs, manage a pod's models, make a worker key.

    comfy-worker keygen [--api-key NAME [--scopes jobs,models,admin,metrics]]
    comfy-worker run workflow.json --url http://pod:8000 [--server-key PUB] [--api-key KEY]
    comfy-worker run workflow.json --endpoint ID --api-key KEY [--runpod-url URL] [--server-key PUB]
    comfy-worker run --template NAME -p width=512 -p image=@in.png --url http://pod:8000
    comfy-worker templates check DIR [--comfy http://127.0.0.1:8188]
    comfy-worker download --url http://pod:8000 --type checkpoints (--from URL | --repo-id R --filename F)
    comfy-worker models --url http://pod:8000 [--type loras]

With a server public key the payload (workflow and input images) is sealed and the answer
opened locally. Progress is drawn on stderr while a job or a download runs. Exit status: 0 done,
1 the job or download failed (its error code is printed), 2 bad usage or unreachable worker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import time
from typing import Any

import requests
from nacl.public import PrivateKey

from .envelope_client import (
    b64decode,
    b64encode,
    envelope_json,
    key_id,
    open_answer,
    open_blob,
    payload_json,
    read_answer,
    seal_request,
)

DEFAULT_RUNPOD_URL = "https://api.runpod.ai/v2"
POLL_S = 0.5


class JobFailed(Exception):
    pass


def progress_bar(progress: Any, width: int = 30) -> str:
    if not isinstance(progress, dict):
        return ""
    if isinstance(progress.get("percent"), int | float):  # an encrypted job's coarse progress
        filled = int(width * min(progress["percent"], 100) / 100)
        return f"[{'#' * filled}{'.' * (width - filled)}] {progress['percent']:g}%"
    node, value, maximum = progress.get("node"), progress.get("value"), progress.get("max")
    if isinstance(value, int | float) and isinstance(maximum, int | float) and maximum > 0:
        filled = int(width * min(value / maximum, 1.0))
        return f"[{'#' * filled}{'.' * (width - filled)}] node {node} {value:g}/{maximum:g}"
    return f"[{'.' * width}] node {node}"


def model_item(spec: str) -> dict:
    """`TYPE=URL[#sha256]` as a job's `models` item."""
    model_type, sep, rest = spec.partition("=")
    url, _, sha256 = rest.partition("#")
    if not sep or not model_type or not url.startswith(("http://", "https://")):
        raise ValueError(
            f"--model {spec!r}: give TYPE=URL or TYPE=URL#sha256, e.g. loras=https://.../x.safetensors"
        )
    return {"type": model_type, "url": url, **({"sha256": sha256} if sha256 else {})}


def build_payload(
    workflow_file: str,
    images: list[str],
    timeout_s: float | None,
    models: list[str] | None = None,
    webhook: str | None = None,
) -> dict:
    with open(workflow_file, encoding="utf-8") as handle:
        workflow = json.load(handle)
    payload: dict[str, Any] = {
        "workflow": workflow,
        "output_format": "worker",
    }  # whatever RESPONSE_FORMAT says
    if images:
        payload["images"] = []
        for spec in images:
            name, _, path = spec.partition("=")
            path = path or name
            with open(path, "rb") as handle:
                data = b64encode(handle.read()).decode("ascii")
            payload["images"].append({"name": os.path.basename(name), "image": data})
    if timeout_s:
        payload["timeout_s"] = timeout_s
    if models:
        payload["models"] = [model_item(spec) for spec in models]
    if webhook:
        payload["webhook"] = webhook  # inside the envelope when the job is encrypted
    return payload


def param_item(spec: str) -> tuple[str, Any]:
    """`NAME=VALUE` of a template call: VALUE as JSON when it parses (512, 0.5, true, "7"), else
    as text; `NAME=@PATH` a file's bytes as base64 (an image parameter)."""
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise ValueError(f"-p {spec!r}: give NAME=VALUE, or NAME=@PATH for an image")
    if value.startswith("@"):
        with open(value[1:], "rb") as handle:
            return name, b64encode(handle.read()).decode("ascii")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def build_template_call(
    template: str, params: list[str], timeout_s: float | None, webhook: str | None = None
) -> dict:
    payload: dict[str, Any] = {"template": template, "params": dict(param_item(spec) for spec in params)}
    if timeout_s:
        payload["timeout_s"] = timeout_s
    if webhook:
        payload["webhook"] = webhook
    return payload


class Runner:
    """Submit, poll with a progress line, and return the opened result."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.session = _session(args.api_key)

    def run(self, payload: dict) -> dict:
        answer = self._submit(payload)
        if self._stale_key(answer):  # the worker rotated its key: fetch the current one, once
            self.args.server_key = self._current_key()
            answer = self._submit(payload)
        return self._open(answer, self.ephemeral)

    def _submit(self, payload: dict) -> Any:
        body, self.ephemeral = (payload, None)
        if self.args.server_key:
            body, self.ephemeral = seal_request(payload, self.args.server_key)
        return self._run_pod(body) if self.args.url else self._run_runpod(body)

    def _stale_key(self, answer: Any) -> bool:
        error = answer.get("error") if isinstance(answer, dict) else None
        return bool(self.args.url and isinstance(error, str) and error.startswith("unknown_key"))

    def _current_key(self) -> str:
        """The pod's current public key, from /healthz (a RunPod endpoint's comes out of band)."""
        health = _json_or_error(self.session.get(f"{self.args.url.rstrip('/')}/healthz", timeout=30))
        if not health.get("server_public_key_b64"):
            raise JobFailed("the worker answered unknown_key and publishes no key")
        return health["server_public_key_b64"]

    def output_bytes(self, output: dict) -> bytes:
        """Inline data, or the bucket URL the worker answered with (opened when sealed)."""
        if "data" in output:
            return b64decode(output["data"])
        response = requests.get(output["url"], timeout=300)
        response.raise_for_status()
        if output.get("sealed"):
            return open_blob(response.content, self.ephemeral, self.args.server_key)
        return response.content

    def _open(self, answer: Any, ephemeral: PrivateKey | None) -> dict:
        result = open_answer(answer, ephemeral, self.args.server_key) if ephemeral else answer
        if not isinstance(result, dict) or "error" in result:
            raise JobFailed(result.get("error") if isinstance(result, dict) else str(result))
        return result

    def _run_pod(self, body: dict) -> Any:
        base = self.args.url.rstrip("/")
        data = envelope_json(body) if self.ephemeral else payload_json(body)
        headers = {"Content-Type": "application/json"}
        started = self.session.post(
            f"{base}/run", params={"async": "1"}, data=data, headers=headers, timeout=60
        )
        if started.status_code != 202:
            return _json_or_error(started)
        job_id = started.json()["id"]
        while True:
            status = _json_or_error(self.session.get(f"{base}/jobs/{job_id}", timeout=30))
            if "error" in status and "state" not in status:
                return status
            self._draw(status.get("progress"))
            if status["state"] in ("completed", "failed", "cancelled"):
                self._draw(None, done=True)
                return status["result"]
            time.sleep(POLL_S)

    def _run_runpod(self, body: dict) -> Any:
        base = f"{self.args.runpod_url.rstrip('/')}/{self.args.endpoint}"
        started = _json_or_error(self.session.post(f"{base}/run", json={"input": body}, timeout=60))
        if "id" not in started:
            return started
        while True:
            status = _json_or_error(self.session.get(f"{base}/status/{started['id']}", timeout=30))
            state = status.get("status")
            if state == "IN_PROGRESS":
                self._draw(status.get("output"))
            elif state == "COMPLETED":
                self._draw(None, done=True)
                return status.get("output")
            elif state in ("FAILED", "CANCELLED", "TIMED_OUT") or "status" not in status:
                self._draw(None, done=True)
                return {"error": status.get("error") or state}
            time.sleep(POLL_S)

    def _draw(self, progress: Any, done: bool = False) -> None:
        if self.args.quiet:
            return
        line = "" if done else progress_bar(progress)
        sys.stderr.write(f"\r{line:<70}" + ("\n" if done else ""))
        sys.stderr.flush()


def write_outputs(result: dict, out_dir: str, runner: Runner) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for index, output in enumerate(result.get("outputs") or []):
        name = os.path.basename(output.get("filename") or f"{output.get('node_id')}_{index}.txt")
        path = os.path.join(out_dir, name)
        with open(path, "wb") as handle:
            handle.write(runner.output_bytes(output))
        written.append(path)
    return written


def run_workflow(args: argparse.Namespace) -> int:
    """Run the workflow file and write its outputs, one path a line."""
    runner = Runner(args)
    if args.template:
        payload = build_template_call(args.template, args.param, args.timeout, args.webhook)
    else:
        payload = build_payload(args.workflow, args.image, args.timeout, args.model, args.webhook)
    result = runner.run(payload)
    for path in write_outputs(result, args.out, runner):
        print(path)
    if "params" in result:  # what the template ran with: a drawn seed repeats the result
        print(json.dumps({"params": result["params"]}), file=sys.stderr)
    return 0


def check_templates(args: argparse.Namespace) -> int:
    """Each template of DIR against a running ComfyUI's inputs, a line each: 0 all serve, 1 not."""
    try:  # the worker's own code: in its checkout or image, not in the client's wheel
        from services.comfy.client import ComfyClient
        from services.jobs.templates import Catalog, Templates
    except ImportError:
        print(
            "error: templates check runs where the worker is installed (its checkout or image)",
            file=sys.stderr,
        )
        return 2
    client = ComfyClient(args.comfy)
    if not client.ready():
        print(f"error: no ComfyUI answers at {args.comfy} (--comfy URL)", file=sys.stderr)
        return 2
    templates = Templates((args.dir,), Catalog(client.node_info))
    templates.check_with_comfyui(lambda: True)
    if not templates.checked:
        print(f"error: ComfyUI at {args.comfy} stopped answering during the check", file=sys.stderr)
        return 2
    for template in templates.serving():
        print(f"ok        {template.name}: {len(template.params)} parameters")
    for rejected in templates.view()["rejected"]:
        print(f"rejected  {rejected['reason']}")
    return 1 if templates.view()["rejected"] else 0


def download(args: argparse.Namespace) -> int:
    """Start one model download on a pod and follow it to its end."""
    session = _session(args.api_key)
    item = {"type": args.type, "sha256": args.sha256, "target": args.name}
    if args.source:
        item["url"] = args.source
    else:
        item.update(repo_id=args.repo_id, filename=args.filename, revision=args.revision)
    base = args.url.rstrip("/")
    started = _json_or_error(
        session.post(f"{base}/download", json={"items": [{k: v for k, v in item.items() if v}]}, timeout=60)
    )
    if "downloads" not in started:
        raise JobFailed(started.get("error"))
    state = started["downloads"][0]
    while state["state"] in ("queued", "running"):
        if not args.quiet:
            done, total = state.get("bytes_done") or 0, state.get("total")
            shown = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
            sys.stderr.write(f"\r{state['filename']}: {shown:<40}")
        time.sleep(POLL_S)
        state = _json_or_error(session.get(f"{base}/download/{state['id']}", timeout=30))
        if "state" not in state:
            raise JobFailed(state.get("error"))
    if not args.quiet:
        sys.stderr.write("\n")
    if state["state"] == "failed":
        raise JobFailed(state.get("error"))
    print(f"{state['type']}/{state['filename']} {state['state']}")
    return 0


def models(args: argparse.Namespace) -> int:
    """One line per model file on the pod's volume: type/name and size."""
    params = {"type": args.type} if args.type else None
    listing = _json_or_error(
        _session(args.api_key).get(f"{args.url.rstrip('/')}/models/ls", params=params, timeout=30)
    )
    if "models" not in listing:
        raise JobFailed(listing.get("error"))
    for kind, files in sorted(listing["models"].items()):
        for entry in files:
            print(f"{kind}/{entry['name']}\t{entry['size']}")
    return 0


def _session(api_key: str | None) -> requests.Session:
    session = requests.Session()
    if api_key:
        session.headers["Authorization"] = f"Bearer {api_key}"
    return session


def _json_or_error(response: requests.Response) -> Any:
    try:
        return read_answer(response.content)
    except ValueError:
        return {"error": f"http_{response.status_code}: the worker did not answer JSON"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="print a new worker key pair, or an API key")
    keygen.add_argument("--api-key", metavar="NAME", help="an API key named NAME and its API_KEYS_FILE line")
    keygen.add_argument("--scopes", default="jobs", help="its scopes: jobs, models, admin, metrics")
    run = commands.add_parser("run", help="run a workflow file (API format) or a template")
    run.add_argument("workflow", nargs="?", help="the workflow file (or --template)")
    run.add_argument("--template", help="a template the worker serves (GET /templates)")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        help="a template parameter as NAME=VALUE (JSON where it parses) or NAME=@PATH (an image)",
    )
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="pod API base URL, e.g. http://127.0.0.1:8000")
    target.add_argument("--endpoint", help="RunPod endpoint id")
    run.add_argument(
        "--runpod-url",
        default=DEFAULT_RUNPOD_URL,
        help="RunPod API base (a local queue: http://127.0.0.1:8000/v2)",
    )
    run.add_argument("--api-key", help="API_KEY of the pod, or the RunPod API key")
    run.add_argument("--server-key", help="the worker's public key (base64): encrypt the job")
    run.add_argument("--image", action="append", default=[], help="input image as NAME=PATH (or PATH)")
    run.add_argument("--timeout", type=float, help="per-job timeout in seconds")
    run.add_argument(
        "--model",
        action="append",
        default=[],
        help="a model the job needs on the volume, as TYPE=URL[#sha256] (fetched once, then cached)",
    )
    run.add_argument("--webhook", help="a URL told of the job's end (a signed POST; README: Webhooks)")
    run.add_argument("--out", default="outputs", help="folder for the outputs")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch = commands.add_parser("download", help="download a model onto a pod's volume")
    fetch.add_argument("--url", required=True, help="pod API base URL")
    fetch.add_argument("--api-key", help="API_KEY of the pod")
    fetch.add_argument("--type", required=True, help="model folder: checkpoints, loras, vae, ...")
    source = fetch.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="source", help="an http(s) URL")
    source.add_argument("--repo-id", help="a Hugging Face repository (with --filename)")
    fetch.add_argument("--filename", help="the file in the Hugging Face repository")
    fetch.add_argument("--revision", help="a Hugging Face revision")
    fetch.add_argument("--name", help="the file name on the volume")
    fetch.add_argument("--sha256", help="refuse the file unless it has this sha256")
    fetch.add_argument("--quiet", action="store_true", help="no progress line")
    templates = commands.add_parser("templates", help="check a folder of templates")
    templates.add_argument("action", choices=["check"])
    templates.add_argument("dir", help="a folder of templates (TEMPLATES_DIR)")
    templates.add_argument("--comfy", default="http://127.0.0.1:8188", help="a running ComfyUI's URL")
    listing = commands.add_parser("models", help="list the models on a pod's volume")
    listing.add_argument("--url", required=True, help="pod API base URL")
    listing.add_argument("--api-key", help="API_KEY of the pod")
    listing.add_argument("--type", help="only this model folder")
    return parser


def _check_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if bool(args.workflow) == bool(args.template):
        parser.error("give a workflow file or --template NAME, one of them")
    if args.template and (args.image or args.model):
        parser.error("a template takes its images as -p NAME=@PATH, and names its models itself")
    if args.param and not args.template:
        parser.error("-p goes with --template")
    for spec in args.model:
        try:
            model_item(spec)
        except ValueError as exc:
            parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "download" and args.repo_id and not args.filename:
        parser.error("--repo-id needs --filename")
    if args.command == "run":
        _check_run(parser, args)
    if args.command == "keygen" and args.api_key:
        token = "cwk_" + secrets.token_urlsafe(32)
        print(f"# the client's token (shown once; the file keeps only its hash): {token}")
        print(f"{args.api_key} sha256:{hashlib.sha256(token.encode()).hexdigest()} {args.scopes}")
        return 0
    if args.command == "keygen":
        key = PrivateKey.generate()
        print(f"WORKER_PRIVATE_KEY_B64={b64encode(bytes(key)).decode()}")
        print(f"SERVER_PUBLIC_KEY_B64={b64encode(bytes(key.public_key)).decode()}")
        print(f"KEY_ID={key_id(b64encode(bytes(key.public_key)).decode())}")
        print(f"WEBHOOK_SECRET=whsec_{b64encode(os.urandom(32)).decode()}")
        return 0
    command = {"run": run_workflow, "download": download, "models": models, "templates": check_templates}[
        args.command
    ]
    try:
        return command(args)
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, requests.RequestException) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
