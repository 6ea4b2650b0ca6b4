"""The seed's recipe: one encrypted job against a worker, configured by environment variables.

    SERVER_PUBLIC_KEY_B64=...  (required; from /healthz or `make keygen`)
    RUNPOD_SERVERLESS=1 RP_ENDPOINT_ID=... RP_API_KEY=... [RUNPOD_ENDPOINT_BASE_URL=http://127.0.0.1:8000/v2]
    or: POD_URL=http://127.0.0.1:8000 [API_KEY=...]
    [WORKFLOW_FILE=workflow_api.json]  (default: a 64x64 EmptyImage -> SaveImage)

Prints the result's status and outputs (not their bytes) and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from .cli import DEFAULT_RUNPOD_URL, JobFailed, Runner, build_payload

TINY_WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x3366CC},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "encrypted_run"}},
}


def main() -> int:
    env = os.environ
    serverless = env.get("RUNPOD_SERVERLESS", "0").lower() in ("1", "true", "yes")
    args = argparse.Namespace(
        url=None if serverless else env.get("POD_URL", "http://127.0.0.1:8000"),
        endpoint=env.get("RP_ENDPOINT_ID") if serverless else None,
        runpod_url=env.get("RUNPOD_ENDPOINT_BASE_URL", DEFAULT_RUNPOD_URL),
        api_key=env.get("RP_API_KEY") if serverless else env.get("API_KEY"),
        server_key=env.get("SERVER_PUBLIC_KEY_B64"),
        quiet=True,
    )
    if not args.server_key or (serverless and not args.endpoint):
        print("set SERVER_PUBLIC_KEY_B64 (and RP_ENDPOINT_ID with RUNPOD_SERVERLESS=1)", file=sys.stderr)
        return 2
    workflow_file = env.get("WORKFLOW_FILE")
    if not workflow_file:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(TINY_WORKFLOW, handle)
            workflow_file = handle.name
    try:
        result = Runner(args).run(build_payload(workflow_file, [], None))
    except JobFailed as exc:
        print(f"FAILED {exc}")
        return 1
    summary = [{k: o[k] for k in ("node_id", "filename", "mime", "size")} for o in result.get("outputs", [])]
    print(json.dumps({"status": result["status"], "prompt_id": result.get("prompt_id"), "outputs": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
