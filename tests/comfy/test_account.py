"""ComfyUI's own user: made when missing, and what it cannot reach named before anything starts.
Root only (CI runs as root): a user of its own needs a root start."""

import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest
import requests

from services.comfy import account
from tests.stack import Stack
from tests.workflows import empty_image

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="separate users need a root start (CI runs as root)")

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def tmp_path():
    """A folder anyone may enter (pytest's own sits in a folder only root may enter)."""
    folder = tempfile.mkdtemp(prefix="cw-account-")
    os.chmod(folder, 0o755)
    yield pathlib.Path(folder)
    shutil.rmtree(folder)


@pytest.fixture
def closed_interpreter(tmp_path):
    """This test run's environment behind a link in a folder only root may enter."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    (closed / "venv").symlink_to(sys.prefix)
    return str(closed), str(closed / "venv" / "bin" / "python")


@pytest.fixture
def new_user_name():
    name = f"cw{uuid.uuid4().hex[:10]}"
    yield name
    subprocess.run(["userdel", name], capture_output=True, check=False)


def test_the_folder_on_the_way_that_is_closed_is_named(closed_interpreter, tmp_path):
    closed, link = closed_interpreter
    assert account.unreachable(NOBODY, [(link, os.X_OK)]) == closed
    opened = tmp_path / "open"
    opened.mkdir(mode=0o755)
    (opened / "python").symlink_to(link)  # a link to a link: followed to the closed folder
    assert account.unreachable(NOBODY, [(str(opened / "python"), os.X_OK)]) == closed


def test_what_can_be_reached_or_does_not_exist_yet_is_not_in_the_way(tmp_path):
    readable = tmp_path / "main.py"
    readable.write_text("")
    os.chmod(readable, 0o644)
    needs = [("/usr/bin/env", os.X_OK), (str(readable), os.R_OK), (str(tmp_path / "later" / "run"), os.X_OK)]
    assert account.unreachable(NOBODY, needs) is None
    os.chmod(readable, 0o600)
    assert account.unreachable(NOBODY, needs) == str(readable)


def test_a_missing_user_is_made_without_a_login_shell(new_user_name):
    made = account.create(new_user_name)
    assert pwd.getpwnam(new_user_name) == made
    assert made.pw_uid != 0 and made.pw_shell.endswith(("nologin", "false"))
    assert account.create(new_user_name) == made  # made already (another worker): the same user


def test_a_name_useradd_refuses_says_why():
    with pytest.raises(account.AccountError, match="cannot create the user 'bad name:'"):
        account.create("bad name:")


def test_an_interpreter_comfyui_user_cannot_run_is_named_in_one_line_and_comfyui_runs_as_root(
    closed_interpreter,
):
    closed, link = closed_interpreter
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "COMFY_USER": "nobody", "COMFY_PYTHON": link}
    with Stack("api", env).ready() as stack:
        [line] = [row for row in stack.log.splitlines() if "cannot reach" in row]
        assert f"'nobody' (uid {NOBODY.pw_uid}) cannot reach {closed}:" in line
        assert "make it readable" in line and "use the image" in line and "COMFY_USER=root" in line
        assert "ComfyUI runs as the same user as the processes that hold the worker's key" in stack.log
        answer = requests.post(stack.url + "/run", json={"workflow": empty_image(5, 5)}, timeout=60)
        assert answer.json()["status"] == "ok", answer.text


def test_the_image_stops_when_comfyui_cannot_have_its_own_user(closed_interpreter):
    closed, link = closed_interpreter
    env = {"DRY_RUN": "0", "COMFY_USER": "nobody", "COMFY_PYTHON": link, "COMFY_USER_REQUIRED": "1"}
    stack = Stack("api", env)
    proc = stack.spawn()
    output, _ = proc.communicate(timeout=60)
    shutil.rmtree(stack.run_dir)
    assert proc.returncode == 1
    assert f"cannot reach {closed}:" in output.decode() and "COMFY_USER_REQUIRED" in output.decode()
    assert "starting supervisord" not in output.decode()
