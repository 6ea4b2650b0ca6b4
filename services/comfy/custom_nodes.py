"""Image build step: install ComfyUI custom nodes from a pinned list.

Each line is `<GitHub repository URL> <commit hash>`; the commit's tarball is fetched (no git
in the image), unpacked into ComfyUI/custom_nodes/<repo>, and its requirements installed with
ComfyUI's Python under comfyui-requirements.lock as constraints (a node cannot move torch).
Branch names are refused: a rebuild must give the same image.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import urllib.request

from services.comfy import install as comfy_install

_LINE = re.compile(r"^https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?\s+([0-9a-fA-F]{7,40})$")


class NodeListError(ValueError):
    pass


def parse(text: str) -> list[tuple[str, str, str]]:
    """(owner, repo, commit) per non-comment line; anything unpinned is an error."""
    nodes = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise NodeListError(f"line {number}: expected '<https://github.com/owner/repo> <commit hash>'")
        nodes.append((match.group(1), match.group(2), match.group(3).lower()))
    return nodes


def install(owner: str, repo: str, commit: str, comfy_dir: str, python: str) -> None:
    target = os.path.join(comfy_dir, "custom_nodes", repo)
    url = f"https://github.com/{owner}/{repo}/archive/{commit}.tar.gz"
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    os.makedirs(target, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            member.name = member.name.split("/", 1)[1] if "/" in member.name else ""  # drop <repo>-<commit>/
            if member.name:
                comfy_install.extract(archive, member, target)
    requirements = os.path.join(target, "requirements.txt")
    if os.path.exists(requirements):
        subprocess.run(
            [python, "-m", "pip", "install", "--no-cache-dir", "-r", requirements, "-c", comfy_install.LOCK],
            check=True,
        )


def main(argv: list[str]) -> int:
    list_file, comfy_dir, python = argv
    with open(list_file, encoding="utf-8") as handle:
        nodes = parse(handle.read())
    for owner, repo, commit in nodes:
        print(f"[custom_nodes] {owner}/{repo} @ {commit}", flush=True)
        install(owner, repo, commit, comfy_dir, python)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
