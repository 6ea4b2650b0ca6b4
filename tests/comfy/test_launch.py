import os

import pytest
import requests
import yaml

from services.comfy import launch
from services.core import config
from services.jobs import envelopes
from services.models import model_folders
from tests.stack import Stack, wait_until
from tests.workflows import empty_image


def settings(tmp_path, **env):
    base = {
        "ENCRYPTION_REQUIRED": "0",
        "RUN_DIR": str(tmp_path / "run"),
        "COMFYUI_MODEL_DIR": str(tmp_path / "models"),
        "COMFYUI_DIR": "/opt/ComfyUI",
        "COMFY_PYTHON": "/venv/bin/python",
        "COMFY_PORT": "8199",
    }
    return config.load({**base, **env})


def test_command_has_the_worker_flags_and_appends_comfy_args(tmp_path):
    s = settings(tmp_path, COMFY_ARGS="--lowvram --preview-method 'auto'")
    argv = launch.command(s, "/run/x.yaml", gpu=False)
    assert argv[:3] == ["/venv/bin/python", "-u", "/opt/ComfyUI/main.py"]
    joined = " ".join(argv)
    assert "--listen 127.0.0.1 --port 8199" in joined and "--disable-metadata" in argv
    assert f"--output-directory {tmp_path}/run/comfy/output" in joined
    assert "--extra-model-paths-config /run/x.yaml" in joined
    assert argv[-4:] == ["--cpu", "--lowvram", "--preview-method", "auto"]
    assert "--cpu" not in launch.command(s, "/run/x.yaml", gpu=True)


def test_model_paths_yaml_covers_every_folder_type_and_legacy_names(tmp_path):
    s = settings(tmp_path)
    path = launch.prepare_folders(s)
    with open(path) as handle:
        parsed = yaml.safe_load(handle)["worker_models"]
    assert parsed["base_path"] == str(tmp_path / "models") and parsed["is_default"] is True
    assert parsed["text_encoders"].split() == ["text_encoders", "clip"]
    assert parsed["diffusion_models"].split() == ["diffusion_models", "unet"]
    assert set(parsed) - {"base_path", "is_default"} == set(model_folders.FOLDERS)


def test_a_restart_wipes_what_an_interrupted_job_left(tmp_path):
    s = settings(tmp_path)
    launch.prepare_folders(s)
    leftover = tmp_path / "run" / "comfy" / "output" / "job-1" / "x.png"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"secret")
    launch.prepare_folders(s)
    assert not leftover.exists()
    assert sorted(os.listdir(tmp_path / "run" / "comfy")) == [
        "extra_model_paths.yaml",
        "input",
        "output",
        "temp",
        "user",
    ]


def test_comfyui_gets_an_allow_listed_environment(tmp_path):
    s = settings(tmp_path, COMFY_ENV="MY_NODE_SETTING")
    environ = {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "1",
        "HIP_VISIBLE_DEVICES": "0",
        "MY_NODE_SETTING": "x",
        "WORKER_PRIVATE_KEY_B64": "k",
        "API_KEY": "a",
        "HF_TOKEN": "h",
        "RUNPOD_AI_API_KEY": "r",
        "SOMETHING_ELSE": "s",
    }
    env = launch.comfy_environment(environ, s, "/home/x")
    assert set(env) == {
        "PATH",
        "LC_ALL",
        "CUDA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "MY_NODE_SETTING",
        "HOME",
        "PYTHONUNBUFFERED",
    }


def test_no_secret_reaches_comfyui_even_when_comfy_env_names_it(tmp_path):
    old_keys = [envelopes.keypair()[0] for _ in range(2)]
    secrets = {
        "STATE_URL": "redis://:pw@redis:6379/0",
        "API_KEY": "a-key",
        "HF_TOKEN": "hf-token",
        "WORKER_PREVIOUS_KEYS_B64": ",".join(old_keys),
        "WEBHOOK_SECRET": "whsec_" + "A" * 32,
    }
    names = "STATE_URL,API_KEY,HF_TOKEN,WORKER_PREVIOUS_KEYS_B64,WEBHOOK_SECRET,MY_NODE_SETTING,OLD_KEY"
    s = settings(tmp_path, COMFY_ENV=names, **secrets)
    environ = {"PATH": "/usr/bin", "MY_NODE_SETTING": "x", "OLD_KEY": old_keys[1], **secrets}
    env = launch.comfy_environment(environ, s, "/home/x")
    assert set(env) == {"PATH", "MY_NODE_SETTING", "HOME", "PYTHONUNBUFFERED"}  # a previous key by any name


def test_comfyui_keeps_nothing_in_its_own_folder(tmp_path):
    argv = " ".join(launch.command(settings(tmp_path), "/x.yaml", gpu=False))
    assert (
        f"--user-directory {tmp_path}/run/comfy/user" in argv and "--database-url sqlite:///:memory:" in argv
    )


def test_yaml_quotes_odd_paths(tmp_path):
    text = model_folders.extra_model_paths_yaml("/data/it's models")
    assert yaml.safe_load(text)["worker_models"]["base_path"] == "/data/it's models"


def test_log_silent_shows_comfy_boot_and_silences_its_jobs_and_the_access_log():
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "LOG_SILENT": "1"}).start(
        wait_for=("api", "comfy")
    )
    try:
        stack.wait_http("/readyz")
        assert (
            requests.post(stack.url + "/run", json={"workflow": empty_image(8, 8, 3)}, timeout=60).status_code
            == 200
        )
        log = stack.log
        assert "[comfy] starting ComfyUI" in log  # lifecycle lines stay
        assert "[standin] ComfyUI stand-in" in log and "To see the GUI" in log  # its boot is shown
        assert "its own output is not logged from now on" in log
        assert "got prompt" not in log and "Prompt executed" not in log  # its job lines are not
        assert "POST /run" not in log
    finally:
        stack.stop()


def test_comfy_output_shown_passes_its_job_lines_through():
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0"}, key=False).ready()
    try:
        response = requests.post(stack.url + "/run", json={"workflow": empty_image(8, 8, 4)}, timeout=60)
        assert response.status_code == 200
        wait_until(lambda: "Prompt executed in" in stack.log, 5, "ComfyUI's job lines")
        assert "not logged from now on" not in stack.log
    finally:
        stack.stop()


def test_a_comfy_that_dies_at_boot_is_named_in_the_containers_last_words(tmp_path):
    """With a worker key ComfyUI's output is private after boot; an import error at boot is shown
    as it happens and again when the container gives up."""
    broken = tmp_path / "ComfyUI"
    broken.mkdir()
    (broken / "main.py").write_text("print('booting', flush=True)\nimport no_such_module_xyz\n")
    stack = Stack("api", {"DRY_RUN": "0", "COMFYUI_DIR": str(broken)})
    stack.start()
    try:
        assert stack.proc.wait(timeout=60) == 1
        log = stack.log
        assert log.count("ModuleNotFoundError: No module named 'no_such_module_xyz'") >= 2
        words = log[log.index("[entrypoint] exiting 1: program comfy failed for good") :]
        assert "the last lines ComfyUI printed" in words
        assert "No module named 'no_such_module_xyz'" in words and "booting" in words
    finally:
        stack.stop()


def test_the_device_is_auto_or_cpu(tmp_path):
    assert settings(tmp_path).comfy_device == "auto"
    assert settings(tmp_path, COMFY_DEVICE="CPU").comfy_device == "cpu"
    with pytest.raises(config.ConfigError, match="COMFY_DEVICE"):
        settings(tmp_path, COMFY_DEVICE="gpu")


def test_a_secret_written_with_spaces_or_a_newline_reaches_comfyui_by_no_name(tmp_path):
    """The filter compared exact values: `"k1, k2"` or a key with a trailing newline passed
    when COMFY_ENV named its variable (or a copy of it under another name)."""
    old_keys = [envelopes.keypair()[0] for _ in range(2)]
    current = envelopes.keypair()[0]
    secrets = {
        "WORKER_PRIVATE_KEY_B64": current + "\n",
        "WORKER_PREVIOUS_KEYS_B64": f"{old_keys[0]}, {old_keys[1]}",
        "API_KEY": " an-api-key-of-some-length ",
    }
    copies = {
        "KEY_COPY": current + "\n",
        "KEYS_COPY": f"{old_keys[0]}, {old_keys[1]}",
        "ONE_OLD": f" {old_keys[1]}",
        "AUTH_HEADER": "Bearer an-api-key-of-some-length",
        "MY_NODE_SETTING": "fine",
    }
    s = settings(tmp_path, COMFY_ENV=",".join([*secrets, *copies]), **secrets)
    env = launch.comfy_environment({**secrets, **copies, "PATH": "/usr/bin"}, s, "/home/x")
    assert set(env) == {"PATH", "MY_NODE_SETTING", "HOME", "PYTHONUNBUFFERED"}
