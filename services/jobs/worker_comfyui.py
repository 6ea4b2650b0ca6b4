"""The answer shape of runpod-workers/worker-comfyui, for clients written against it.

Asked for with `"output_format": "worker-comfyui"` in the request or `RESPONSE_FORMAT` by the
operator. worker-comfyui returns only images; here every output file (video, audio, latents,
3D, ...) is in `images` too, under its own file name, with `mime` and `node_id` beside the
fields its clients read; a text output becomes a `.txt` entry. Failures keep the
`{"error": ...}` they have in both shapes.
"""

from __future__ import annotations

from typing import Any


def answer(result: dict) -> dict:
    """Our success result (README: Pod API) as worker-comfyui would have answered it."""
    images = [_entry(index, output) for index, output in enumerate(result.get("outputs") or [])]
    if not images:
        return {
            "status": "success_no_images",
            "images": [],
            **({"dry_run": True} if result.get("dry_run") else {}),
        }
    return {"images": images}


def _entry(index: int, output: dict[str, Any]) -> dict[str, Any]:
    filename = output.get("filename") or f"node-{output.get('node_id')}-{index}.txt"
    entry = {"filename": filename, "node_id": output.get("node_id"), "mime": output.get("mime")}
    if "url" in output:  # moved to the bucket (MAX_RESULT_MB): worker-comfyui's S3 form
        entry.update(type="s3_url", data=output["url"], sealed=output.get("sealed", False))
    else:
        entry.update(type="base64", data=output.get("data"))
    return entry
