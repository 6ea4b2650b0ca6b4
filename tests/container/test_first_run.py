"""The first `make run` on a fresh machine, for real (make test-real): a clean copy of the checkout
installs the worker and ComfyUI from a local source, boots, and answers an encrypted job; with a
package missing from ComfyUI's environment, its output names the missing module."""

import os
import signal
import subprocess
import time

import pytest
import requests

from client.envelope_client import open_answer, seal_request
from tests import comfyui_source
from tests.stack import copy_checkout, free_port, wait_until
from tests.workflows import decode_png, empty_image

pytestmark = [pytest.mark.real, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A fresh copy of the project: what git tracks (or would), nothing installed."""
    folder = tmp_path_factory.mktemp("first-run")
    copy = folder / "checkout"
    copy_checkout(str(copy))
    return copy, comfyui_source.tarball(str(folder))


def make_run(copy, source, run_dir):
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(copy)),
        "LAUNCH_MODE": "api",
        "API_PORT": str(port),
        "COMFY_PORT": str(free_port()),
        "RUN_DIR": str(run_dir),
        "COMFYUI_MODEL_DIR": str(run_dir / "models"),
        "COMFYUI_SOURCE": source,
    }
    log = open(run_dir.parent / f"{run_dir.name}.log", "w+b")  # noqa: SIM115 (read and closed by the caller)
    proc = subprocess.Popen(
        ["make", "run"], cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return proc, f"http://127.0.0.1:{port}", log


def text(log):
    log.flush()
    log.seek(0)
    return log.read().decode("utf-8", "replace")


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # our own session: make and what it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ready(url):
    try:
        return requests.get(url + "/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_first_make_run_installs_boots_and_answers_an_encrypted_job(checkout, tmp_path):
    copy, source = checkout
    proc, url, log = make_run(copy, source, tmp_path / "run")
    try:
        wait_until(lambda: ready(url) or proc.poll() is not None, 900, "make run to answer /readyz")
        shown = text(log)
        assert proc.poll() is None, shown[-3000:]
        for step in ("step 1/3: fetching ComfyUI", "step 2/3: creating", "step 3/3: installing", "  | "):
            assert step in shown
        assert "To see the GUI go to" in shown  # ComfyUI's boot is shown although a key was made
        public = shown.split("public key: ", 1)[1].split()[0]
        request, ephemeral = seal_request({"workflow": empty_image(24, 24, 0xFF0000)}, public)
        answer = requests.post(url + "/run", json=request, timeout=120).json()
        result = open_answer(answer, ephemeral, public)
        assert decode_png(result["outputs"][0]).convert("RGB").getpixel((5, 5)) == (255, 0, 0)
    finally:
        stop(proc)
        log.close()


def test_a_package_missing_from_comfyuis_environment_is_named(checkout, tmp_path):
    copy, source = checkout
    python = copy / ".comfyui" / "venv" / "bin" / "python"
    assert python.exists(), "the first test installs ComfyUI into the copy"
    subprocess.run(
        [python, "-m", "pip", "uninstall", "-y", "-q", "requests"], check=True, capture_output=True
    )
    proc, _, log = make_run(copy, source, tmp_path / "run")
    started = time.monotonic()
    try:
        proc.wait(180)
    finally:
        stop(proc)
        shown = text(log)
        log.close()
    assert proc.returncode != 0, shown[-3000:]
    assert time.monotonic() - started < 180
    words = shown[shown.index("[entrypoint] exiting 1: program comfy failed for good") :]
    assert "No module named 'requests'" in words
