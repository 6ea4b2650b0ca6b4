"""A local ComfyUI source for the tests that install it (this machine cannot reach upstream)."""

from __future__ import annotations

import os
import tarfile

from services.comfy import install
from tests.stack import real_backend


def tarball(folder: str) -> str:
    """COMFYUI_SOURCE when set; else a tarball of the real ComfyUI installed here, with its
    commit in the header as GitHub's archives have it. Returns the source's path or URL."""
    if os.environ.get("COMFYUI_SOURCE"):
        return os.environ["COMFYUI_SOURCE"]
    tree = real_backend().comfyui_dir
    commit = install.tree_commit(tree)
    if not commit:
        raise RuntimeError(f"{tree} does not say its commit ({install.COMMIT_FILE}); set COMFYUI_SOURCE")
    path = os.path.join(folder, f"ComfyUI-{commit}.tar.gz")
    if os.path.exists(path):
        return path
    skip = {".git", "user", "__pycache__", install.COMMIT_FILE}
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, pax_headers={"comment": commit}) as archive:
        archive.add(
            tree,
            arcname=f"ComfyUI-{commit}",
            filter=lambda member: None if set(member.name.split("/")) & skip else member,
        )
    return path
