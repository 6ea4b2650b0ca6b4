"""One installer for ComfyUI: the pinned commit from a git repository or a tarball, its own venv
from the lock, visible steps, and failures that end with the tool's own words and a way forward."""

import io
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from services.comfy import install
from services.core import config
from tests.stack import ROOT, STANDIN_DIR


def git_repo(tmp_path):
    """A copy of the stand-in as a git repository with a later commit that must not be used;
    returns (repo, the pinned commit)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(os.path.join(STANDIN_DIR, "main.py"), repo / "main.py")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "pinned"], check=True)
    ref = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (repo / "main.py").write_text("# a later commit that must not be used\n")
    subprocess.run([*git, "commit", "-qam", "later"], check=True)
    return repo, ref


def lock_file(tmp_path, ref, lines=()):
    path = tmp_path / "comfyui-requirements.lock"
    path.write_text("\n".join([f"{install.LOCK_REF_PREFIX}{ref}", *lines]) + "\n")
    return str(path)


def tarball(tmp_path, commit, files, top="ComfyUI-x"):
    path = tmp_path / "comfyui.tar.gz"
    headers = {"comment": commit} if commit else {}
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, pax_headers=headers) as archive:
        for name, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(f"{top}/{name}" if top else name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return str(path)


def entrypoint(tmp_path, **env):
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LAUNCH_MODE": "api",
        "COMFYUI_INSTALL_DIR": str(tmp_path / "install"),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.container.entrypoint",
            "--env-file",
            str(tmp_path / ".env.local"),
            "--check",
        ],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_project_lock_is_made_for_the_configured_commit():
    lock_ref, _ = install.read_lock(install.LOCK)
    assert lock_ref == config.Settings().comfyui_ref
    with open(install.LOCK) as handle:
        pins = [line for line in handle if line.strip() and not line.startswith("#")]
    assert all("==" in line for line in pins)
    names = {line.split("==")[0].lower() for line in pins}
    assert {"torch", "torchvision", "requests", "aiohttp", "spandrel"} <= names


@pytest.mark.skipif(
    os.path.exists("/opt/ComfyUI/main.py"), reason="this machine has ComfyUI where the image puts it"
)
def test_unreachable_source_names_the_ways_forward(tmp_path):
    result = entrypoint(tmp_path, COMFYUI_SOURCE=str(tmp_path / "no-such-repo"))
    assert result.returncode == 1
    assert "comfy_init_failed" in result.stderr
    assert "no-such-repo" in result.stderr and "does not exist" in result.stderr  # git's own words
    assert "COMFYUI_DIR" in result.stderr and "DRY_RUN=1" in result.stderr


@pytest.mark.skipif(
    os.path.exists("/opt/ComfyUI/main.py"), reason="this machine has ComfyUI where the image puts it"
)
def test_make_run_installs_the_pinned_commit_once_and_says_each_step(tmp_path):
    repo, ref = git_repo(tmp_path)
    lock = lock_file(tmp_path, ref)
    result = entrypoint(tmp_path, COMFYUI_SOURCE=str(repo), COMFYUI_REF=ref, COMFYUI_LOCK=lock)
    assert result.returncode == 0, result.stderr
    for step in ("step 1/3: fetching ComfyUI", "step 2/3: creating", "step 3/3: installing"):
        assert step in result.stdout
    folder = tmp_path / "install"
    assert f"comfyui_dir={folder}/ComfyUI" in result.stdout
    assert f"comfy_python={folder}/venv/bin/python" in result.stdout
    assert "standin" in (folder / "ComfyUI" / "main.py").read_text()  # the pinned commit, not the later one
    again = entrypoint(tmp_path, COMFYUI_SOURCE=str(tmp_path / "gone"), COMFYUI_REF=ref, COMFYUI_LOCK=lock)
    assert again.returncode == 0 and "fetching" not in again.stdout
    assert "are installed" in again.stdout


def test_a_branch_name_is_not_a_pin(tmp_path):
    result = entrypoint(tmp_path, COMFYUI_REF="master")
    assert result.returncode == 2 and "COMFYUI_REF" in result.stderr


def test_a_commit_the_lock_was_not_made_for_is_refused(tmp_path):
    with pytest.raises(install.InstallError, match="make comfyui-lock COMFYUI_REF=0123456"):
        install.ensure(
            "unused", "0123456", str(tmp_path / "c"), str(tmp_path / "v"), lock_file(tmp_path, "abcdef0")
        )


def test_a_short_hash_that_names_a_branch_is_refused(tmp_path):
    repo, _ = git_repo(tmp_path)
    subprocess.run(["git", "-C", str(repo), "branch", "deadbee"], check=True)
    with pytest.raises(install.InstallError):
        install.fetch(str(repo), "deadbee", str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def test_a_tarball_is_installed_when_its_header_names_the_commit(tmp_path):
    commit = "a" * 40
    source = tarball(tmp_path, commit, {"main.py": "print('comfy')\n", "comfy/x.py": ""})
    assert install.fetch(source, commit[:12], str(tmp_path / "c")) == commit
    assert (tmp_path / "c" / "main.py").read_text() == "print('comfy')\n"
    assert (tmp_path / "c" / "comfy" / "x.py").exists()
    assert install.tree_commit(str(tmp_path / "c")) == commit


@pytest.mark.parametrize(
    ("commit", "message"), [("b" * 40, "not the pinned"), (None, "does not say which commit")]
)
def test_a_tarball_of_another_or_an_unknown_commit_is_refused(tmp_path, commit, message):
    source = tarball(tmp_path, commit, {"main.py": ""})
    with pytest.raises(install.InstallError, match=message):
        install.fetch(source, "a" * 12, str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def test_a_failing_pip_ends_with_its_own_last_lines_and_the_hint(tmp_path, capsys):
    commit = "c" * 40
    source = tarball(tmp_path, commit, {"main.py": ""})
    lock = lock_file(tmp_path, commit, [str(tmp_path / "missing-1.0-py3-none-any.whl")])
    with pytest.raises(install.InstallError) as failure:
        install.ensure(source, commit, str(tmp_path / "c"), str(tmp_path / "v"), lock)
    message = str(failure.value)
    assert "installing ComfyUI's packages failed" in message
    assert "missing-1.0-py3-none-any.whl" in message  # pip's own words
    assert "DRY_RUN=1" in message
    shown = capsys.readouterr().out
    assert "step 3/3" in shown and "  | " in shown  # pip's lines were shown as they came
    assert not (tmp_path / "v" / install.STAMP_FILE).exists()  # nothing claims to be installed


@pytest.mark.parametrize("data_filter", [True, False], ids=["python-filter", "by-hand"])
def test_a_tarball_member_outside_the_tree_is_refused(tmp_path, monkeypatch, data_filter):
    if not data_filter:  # the image's Python 3.11.2 has no extraction filters
        monkeypatch.delattr(tarfile, "data_filter")
    commit = "d" * 40
    source = tarball(tmp_path, commit, {"main.py": "", "../escaped.py": "x"}, top=None)
    with pytest.raises((install.InstallError, tarfile.TarError)):
        install.fetch(source, commit, str(tmp_path / "c"))
    assert not (tmp_path / "escaped.py").exists() and not (tmp_path / "c").exists()


def test_a_symlink_out_of_the_tree_is_refused_by_hand_too(tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter")
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "e" * 40}) as archive:
        link = tarfile.TarInfo("ComfyUI-x/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    with pytest.raises(install.InstallError, match="outside"):
        install.fetch(str(path), "e" * 40, str(tmp_path / "c"))


def test_a_folder_the_installer_made_is_a_source_and_names_its_commit(tmp_path):
    commit = "f" * 40
    install.fetch(tarball(tmp_path, commit, {"main.py": "print(1)\n"}), commit, str(tmp_path / "first"))
    assert install.fetch(str(tmp_path / "first"), commit[:12], str(tmp_path / "second")) == commit
    assert (tmp_path / "second" / "main.py").read_text() == "print(1)\n"
    with pytest.raises(install.InstallError, match="not the pinned"):
        install.fetch(str(tmp_path / "first"), "0" * 12, str(tmp_path / "third"))
