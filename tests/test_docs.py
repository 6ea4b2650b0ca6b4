"""The project stands alone: what its code relies on is in its own docs/, and every reference
points there, never to material outside the repository."""

import os
import re
import subprocess

from tests.stack import ROOT

OUTSIDE = re.compile(r"\b(DESIGN|PROTOCOL|RUNTIME|REAL|CONTAINERS)\.md\b|\.\./shared\b")


def test_no_file_cites_material_outside_the_repository_and_the_docs_it_cites_exist():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    cited = set()
    for name in files.stdout.split():
        if name.startswith("tests/comfyui_captures/") or not os.path.isfile(os.path.join(ROOT, name)):
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        assert not OUTSIDE.search(text), f"{name} cites {OUTSIDE.search(text).group(0)}"
        cited |= set(re.findall(r"\bdocs/[\w-]+\.md\b", text))
    assert cited >= {"docs/comfyui-protocol.md", "docs/runtime.md", "docs/image-tier.md"}
    assert all(os.path.isfile(os.path.join(ROOT, doc)) for doc in cited)
