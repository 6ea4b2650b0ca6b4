"""`make run` without COMFYUI_DIR installs ComfyUI at the pinned commit, or says what to do."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.stack import ROOT, STANDIN_DIR


def entrypoint(tmp_path, **env):
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LAUNCH_MODE": "api",
        "COMFYUI_INSTALL_DIR": str(tmp_path / "install"),
    }
    return subprocess.run(
        [sys.executable, "-m", "services.entrypoint", "--env-file", str(tmp_path / ".env.local"), "--check"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(
    os.path.exists("/opt/ComfyUI/main.py"), reason="this machine has ComfyUI where the image puts it"
)
def test_unreachable_source_names_the_ways_forward(tmp_path):
    result = entrypoint(tmp_path, COMFYUI_REPO=str(tmp_path / "no-such-repo"))
    assert result.returncode == 1
    assert (
        "comfy_init_failed" in result.stderr
        and "COMFYUI_DIR" in result.stderr
        and "DRY_RUN=1" in result.stderr
    )


@pytest.mark.skipif(
    os.path.exists("/opt/ComfyUI/main.py"), reason="this machine has ComfyUI where the image puts it"
)
def test_installs_the_pinned_commit_into_its_own_venv(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(STANDIN_DIR, repo)
    (repo / "requirements.txt").write_text("# stand-in: nothing to install\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "pinned"], check=True)
    ref = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (repo / "main.py").write_text("# a later commit that must not be used\n")
    subprocess.run([*git, "commit", "-qam", "later"], check=True)

    result = entrypoint(tmp_path, COMFYUI_REPO=str(repo), COMFYUI_REF=ref)
    assert result.returncode == 0, result.stderr
    install = tmp_path / "install"
    assert f"comfyui_dir={install}/ComfyUI" in result.stdout
    assert f"comfy_python={install}/venv/bin/python" in result.stdout
    assert "standin" in (install / "ComfyUI" / "main.py").read_text()  # the pinned commit, not the later one
    again = entrypoint(tmp_path, COMFYUI_REPO=str(tmp_path / "gone"), COMFYUI_REF=ref)
    assert again.returncode == 0 and "fetching" not in again.stdout  # installed once


def test_a_branch_name_is_not_a_pin(tmp_path):
    result = entrypoint(tmp_path, COMFYUI_REF="master")
    assert result.returncode == 2 and "COMFYUI_REF" in result.stderr
