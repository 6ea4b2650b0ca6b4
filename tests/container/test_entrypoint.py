"""The entrypoint validates before anything starts, then supervisord runs the right programs."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from services.comfy import supervisor_state
from tests.stack import ROOT, Stack, free_port, wait_until


def run_entrypoint(env, *args):
    base = {"PATH": os.environ["PATH"], "RUN_DIR": "/tmp/cw-never-created"}
    return subprocess.run(
        [sys.executable, "-m", "services.container.entrypoint", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("mode", ["apii", "API", ""])
def test_bad_launch_mode_is_refused_before_anything_starts(mode):
    result = run_entrypoint({"LAUNCH_MODE": mode, "ENCRYPTION_REQUIRED": "0"})
    assert result.returncode == 2
    assert "LAUNCH_MODE" in result.stderr and "api, serverless" in result.stderr
    assert not os.path.exists("/tmp/cw-never-created")


def test_missing_key_says_how_to_make_one():
    result = run_entrypoint({"LAUNCH_MODE": "api"})
    assert result.returncode == 2
    assert "WORKER_PRIVATE_KEY_B64" in result.stderr and "keygen" in result.stderr


def test_check_mode_prints_the_configuration_without_secrets():
    result = run_entrypoint(
        {"LAUNCH_MODE": "api", "ENCRYPTION_REQUIRED": "0", "API_KEY": "topsecret"}, "--check"
    )
    assert result.returncode == 0 and "launch_mode=api" in result.stdout and "topsecret" not in result.stdout


def test_dev_env_file_gets_a_key_on_first_run_and_keeps_it(tmp_path):
    env_file = tmp_path / ".env.local"
    first = run_entrypoint({"LAUNCH_MODE": "api", "DRY_RUN": "1"}, "--env-file", str(env_file), "--check")
    assert first.returncode == 0 and "public key:" in first.stdout
    saved = env_file.read_text()
    assert saved.startswith("WORKER_PRIVATE_KEY_B64=") and oct(env_file.stat().st_mode)[-3:] == "600"
    again = run_entrypoint({"LAUNCH_MODE": "api", "DRY_RUN": "1"}, "--env-file", str(env_file), "--check")
    assert again.returncode == 0 and "public key:" not in again.stdout and env_file.read_text() == saved


def test_the_environment_wins_over_the_env_file(tmp_path):
    env_file = tmp_path / ".env.local"
    env_file.write_text("LAUNCH_MODE=serverless\nENCRYPTION_REQUIRED=0\n")
    result = run_entrypoint({"LAUNCH_MODE": "api", "DRY_RUN": "1"}, "--env-file", str(env_file), "--check")
    assert "launch_mode=api" in result.stdout


@pytest.mark.parametrize(
    "mode,dry_run,expected",
    [
        ("api", "1", {"api": "RUNNING", "comfy": "STOPPED", "watchdog": "RUNNING"}),
        (
            "serverless",
            "1",
            {"handler": "RUNNING", "localqueue": "RUNNING", "comfy": "STOPPED", "watchdog": "RUNNING"},
        ),
        ("api", "0", {"api": "RUNNING", "comfy": "RUNNING", "watchdog": "RUNNING"}),
    ],
)
def test_supervisord_runs_exactly_the_programs_of_the_mode(mode, dry_run, expected):
    stack = Stack(mode, {"DRY_RUN": dry_run})
    try:
        stack.start(wait_for=[name for name, state in expected.items() if state == "RUNNING"])
        assert stack.programs() == expected
        wait_until(lambda: "API_KEY and API_KEYS_FILE are not set" in stack.log, 10, "the open-port warning")
    finally:
        assert stack.stop() == 0


def test_sigterm_stops_an_idle_worker_within_10_s_with_exit_code_0_whatever_its_drain_timeout():
    stack = Stack("api", {"DRAIN_TIMEOUT_S": "60"}).start(wait_for=["api"])
    stack.wait_http("/healthz")
    started = time.monotonic()
    code = stack.stop(timeout=10)
    assert code == 0 and time.monotonic() - started < 10
    wait_until(lambda: "drained: nothing left in hand, stopping" in stack.log, 5, "PID 1's last words")


def test_nothing_outlives_a_stop_after_the_log_pipe_is_gone():
    """A container's (or a test run's) log reader may die first: supervisord then fails on its
    own output, and the clean-up after it must still end every program (not stop at its first
    line of output)."""
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0"})
    proc = stack.spawn()  # not start(): this test owns the pipe, and closes it
    try:
        wait_until(
            lambda: stack.state("comfy") == "RUNNING" and stack.state("api") == "RUNNING", 60, "programs"
        )
        rpc = supervisor_state.rpc(stack.socket).supervisor
        programs = [rpc.getProcessInfo(name)["pid"] for name in ("api", "comfy", "watchdog")]
        proc.stdout.close()  # nobody reads the container's output any more
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        wait_until(
            lambda: not any(os.path.exists(f"/proc/{pid}") for pid in programs), 15, "every program to end"
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(stack.run_dir, ignore_errors=True)


def test_programs_do_not_outlive_a_supervisord_that_died_abruptly():
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0"}).ready()
    try:
        rpc = supervisor_state.rpc(stack.socket).supervisor
        comfy, api = rpc.getProcessInfo("comfy")["pid"], rpc.getProcessInfo("api")["pid"]
        os.kill(rpc.getPID(), signal.SIGKILL)
        wait_until(
            lambda: not os.path.exists(f"/proc/{comfy}") and not os.path.exists(f"/proc/{api}"),
            15,
            "the leftovers to end",
        )
        assert stack.proc.wait(timeout=15) != 0
    finally:
        stack.stop()


def test_an_unwritable_model_root_stops_the_pod_with_the_path_and_the_fix(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    models = tmp_path / "file" / "models"
    env = {"LAUNCH_MODE": "api", "DRY_RUN": "1", "ENCRYPTION_REQUIRED": "0", "RUN_DIR": str(tmp_path / "run")}
    result = run_entrypoint({**env, "COMFYUI_MODEL_DIR": str(models)})
    assert result.returncode == 1
    assert f"cannot write the model root (COMFYUI_MODEL_DIR) {models}" in result.stderr
    assert (
        "Run the container as root" in result.stderr and f"chown -R {os.getuid()} {models}" in result.stderr
    )


def test_the_model_folders_are_made_at_start():
    with Stack("api") as stack:
        stack.wait_state("api", "RUNNING")
        models = os.path.join(stack.run_dir, "models")
        assert os.path.isdir(os.path.join(models, "unet")) and os.path.isdir(
            os.path.join(models, "checkpoints")
        )


def test_comfyui_holds_none_of_the_workers_secrets():
    secrets = {
        "API_KEY": "api-key-secret-1",
        "HF_TOKEN": "hf-token-secret-2",
        "CIVITAI_TOKEN": "civitai-secret-3",
        "BUCKET_SECRET_ACCESS_KEY": "bucket-secret-4",
        "CUDA_VISIBLE_DEVICES": "0",  # passed: ComfyUI needs it
    }
    with Stack("serverless", {"DRY_RUN": "0", **secrets}) as stack:
        stack.wait_state("comfy", "RUNNING")
        comfy = supervisor_state.rpc(stack.socket).supervisor.getProcessInfo("comfy")["pid"]
        children = stack.children(comfy)  # the program is the relay; ComfyUI is its child
        for pid in [comfy, *children]:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read().decode().split("\0")
            names = {entry.split("=", 1)[0] for entry in environ if entry}
            assert not names & {"WORKER_PRIVATE_KEY_B64", "API_KEY", "HF_TOKEN", "CIVITAI_TOKEN"}
            assert not names & {"BUCKET_SECRET_ACCESS_KEY", "RUNPOD_AI_API_KEY", "RUNPOD_WEBHOOK_GET_JOB"}
            assert stack.private_key not in "".join(environ)
            assert "CUDA_VISIBLE_DEVICES=0" in environ and any(e.startswith("PATH=") for e in environ)
        assert children, "ComfyUI runs under the relay"


def test_a_second_worker_on_the_same_run_dir_or_comfy_port_is_told_which_setting_to_change():
    with Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0"}).ready() as first:
        same_dir = {
            "LAUNCH_MODE": "api",
            "ENCRYPTION_REQUIRED": "0",
            "DRY_RUN": "1",
            "RUN_DIR": first.run_dir,
            "API_PORT": str(free_port()),
        }
        result = run_entrypoint(same_dir)
        assert result.returncode == 1
        assert f"RUN_DIR={first.run_dir} is in use by another worker" in result.stderr
        other_dir = tempfile.mkdtemp(prefix="cw-")
        try:
            same_port = {
                **same_dir,
                "DRY_RUN": "0",
                "RUN_DIR": other_dir,
                "COMFY_PORT": str(first.comfy_port),
            }
            result = run_entrypoint(same_port)
            assert result.returncode == 1
            assert f"COMFY_PORT={first.comfy_port} is taken" in result.stderr
        finally:
            shutil.rmtree(other_dir, ignore_errors=True)
        assert first.state("comfy") == "RUNNING"  # the first worker is untouched
