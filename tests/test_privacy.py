"""A custom node inside ComfyUI hunts for the worker's secrets: its environment, every
process's environment and command line, the run folder and a make-run style .env.local. Started
as root with ComfyUI as its own user, it finds nothing, in both modes; with ComfyUI as root it
finds the key (the control: the hunt works). make test runs it in the stand-in, make test-real
in the real ComfyUI."""

import base64
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest
import requests

from client.envelope_client import open_answer, seal_request
from services.comfy import supervisor_state
from tests.stack import ROOT, STANDIN, Stack

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="separate users need a root start (CI runs as root)")

API_KEY = "privacy-api-key-secret"
HF_TOKEN = "privacy-hf-token-secret"
NODE = os.path.join(ROOT, "tests", "key_hunt_node.py")


@pytest.fixture(scope="module")
def comfyui(backend):
    """The backend's ComfyUI with the hunting node in its custom_nodes/, and a Python that
    ComfyUI's own user can run (this machine's interpreter lives under /root, closed to others):
    a venv of the system Python with the backend's packages."""
    folder = tempfile.mkdtemp(prefix="privacy-")
    os.chmod(folder, 0o755)
    venv = os.path.join(folder, "venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv], check=True)
    site = os.path.join(venv, "lib", "python3.11", "site-packages")
    if backend is STANDIN:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--target", site]
        lock = os.path.join(ROOT, "requirements.lock")
        subprocess.run(
            [*pip, "aiohttp", "pillow", "pyyaml", "-c", lock],
            check=True,
            capture_output=True,
        )
        comfyui_dir = os.path.join(folder, "ComfyUI")
        os.makedirs(os.path.join(comfyui_dir, "custom_nodes"))
        shutil.copy(os.path.join(backend.comfyui_dir, "main.py"), comfyui_dir)
        placed = os.path.join(comfyui_dir, "custom_nodes", os.path.basename(NODE))
    else:
        packages = subprocess.run(
            [backend.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        with open(os.path.join(site, "comfyui.pth"), "w") as handle:
            handle.write(packages + "\n")
        comfyui_dir = backend.comfyui_dir
        placed = os.path.join(comfyui_dir, "custom_nodes", os.path.basename(NODE))
    shutil.copy(NODE, placed)
    yield {"COMFYUI_DIR": comfyui_dir, "COMFY_PYTHON": os.path.join(venv, "bin", "python")}
    os.remove(placed)
    shutil.rmtree(folder)


def hunt(stack):
    env_local = os.path.join(stack.run_dir, ".env.local")  # as `make run` keeps it: 0600
    with open(env_local, "w") as handle:
        handle.write(f"WORKER_PRIVATE_KEY_B64={stack.private_key}\nAPI_KEY={API_KEY}\n")
    os.chmod(env_local, 0o600)
    places = [stack.run_dir, env_local, os.path.join(stack.run_dir, "supervisord.pid")]
    workflow = {
        "1": {
            "class_type": "KeyHunt",
            "inputs": {
                "needles": "|".join([stack.private_key, API_KEY, HF_TOKEN]),
                "places": "|".join(places),
            },
        }
    }
    request, ephemeral = seal_request({"workflow": workflow}, stack.public_key)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if stack.mode == "api":
        answer = requests.post(stack.url + "/run", json=request, headers=headers, timeout=120).json()
    else:
        job = requests.post(
            stack.url + "/v2/LOCAL/runsync", json={"input": request}, headers=headers, timeout=120
        )
        answer = job.json()["output"]
    result = open_answer(answer, ephemeral, stack.public_key)
    assert result.get("status") == "ok", result
    [text] = [o for o in result["outputs"] if o["type"] == "text"]
    return base64.b64decode(text["data"]).decode()


@pytest.mark.parametrize("mode", ["api", "serverless"])
def test_a_custom_node_finds_no_secret_when_comfyui_has_its_own_user(comfyui, mode):
    env = {"DRY_RUN": "0", "API_KEY": API_KEY, "HF_TOKEN": HF_TOKEN, "COMFY_USER": "nobody", **comfyui}
    with Stack(mode, env).ready() as stack:
        assert hunt(stack) == "nothing"
        assert "ComfyUI runs as" not in stack.log  # no warning: it has its own user


def test_the_hunt_finds_the_key_when_comfyui_runs_as_root(comfyui):
    env = {"DRY_RUN": "0", "API_KEY": API_KEY, "HF_TOKEN": HF_TOKEN, "COMFY_USER": "root", **comfyui}
    with Stack("api", env).ready() as stack:
        found = hunt(stack)
        assert "/environ" in found and ".env.local" in found


def uid_of(pid):
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("Uid:"))


def test_started_as_root_without_its_user_comfyui_gets_a_user_of_its_own(comfyui):
    """As on a RunPod pod or a plain VM: COMFY_USER does not exist, so the start makes it."""
    name = f"cw{uuid.uuid4().hex[:10]}"
    env = {"DRY_RUN": "0", "API_KEY": API_KEY, "COMFY_USER": name, **comfyui}
    try:
        with Stack("api", env).ready() as stack:
            made = pwd.getpwnam(name)
            assert made.pw_uid != 0 and f"made ComfyUI's user '{name}' (uid {made.pw_uid})" in stack.log
            relay = supervisor_state.rpc(stack.socket).supervisor.getProcessInfo("comfy")["pid"]
            [comfyui_pid] = stack.children(relay)
            assert uid_of(relay) == uid_of(comfyui_pid) == made.pw_uid
            assert hunt(stack) == "nothing"
            assert "ComfyUI runs as" not in stack.log
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def test_a_model_folder_comfyuis_user_cannot_read_is_said_and_comfyui_still_runs(comfyui):
    closed = tempfile.mkdtemp(prefix="volume-")  # 0700, as a mounted host folder may be
    env = {"DRY_RUN": "0", "API_KEY": API_KEY, "COMFY_USER": "nobody", **comfyui}
    env["COMFYUI_MODEL_DIR"] = os.path.join(closed, "models")
    try:
        with Stack("api", env).ready() as stack:
            relay = supervisor_state.rpc(stack.socket).supervisor.getProcessInfo("comfy")["pid"]
            assert uid_of(relay) == pwd.getpwnam("nobody").pw_uid  # still a user of its own
            assert f"cannot reach {closed}, so ComfyUI sees no model below it" in stack.log
            assert f"(chmod o+rx {closed})" in stack.log
            assert hunt(stack) == "nothing"
    finally:
        shutil.rmtree(closed)
