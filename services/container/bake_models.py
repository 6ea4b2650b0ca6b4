"""Image build step: fetch the models of a manifest (a JSON list of /download items) into
COMFYUI_MODEL_DIR with the worker's own downloader, so sizes and sha256 are checked."""

from __future__ import annotations

import json
import sys

from services.core import config, errors
from services.models.downloads import Downloads


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as handle:
        items = json.load(handle)
    if not items:
        return 0
    try:
        started = Downloads(config.load()).submit(items)
    except errors.WorkerError as exc:
        print(f"[bake_models] {exc.message}", file=sys.stderr)
        return 1
    failed = False
    for download in started:
        download.ended.wait()
        print(
            f"[bake_models] {download.type}/{download.name}: {download.state} {download.error or ''}".rstrip()
        )
        failed |= download.state == "failed"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
