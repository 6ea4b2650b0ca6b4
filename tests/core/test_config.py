import base64
import os

import pytest

from services.core import config
from services.jobs import envelopes

KEY, _ = envelopes.keypair()
BASE = {"WORKER_PRIVATE_KEY_B64": KEY}


def load(**env: str) -> config.Settings:
    return config.load({**BASE, **env})


def test_defaults_match_the_design_table():
    s = load()
    assert (s.launch_mode, s.api_port, s.api_key) == ("serverless", 8000, None)
    assert (s.model_dir, s.comfyui_dir, s.comfy_port, s.comfy_args) == (
        "/workspace/models",
        "/opt/ComfyUI",
        8188,
        "",
    )
    assert (s.encryption_required, s.dry_run, s.no_history, s.log_silent) == (True, False, False, False)
    assert s.job_timeout_s == 600.0


@pytest.mark.parametrize(
    "raw,value", [("1", True), ("0", False), ("TRUE", True), ("False", False), ("yes", True), ("No", False)]
)
@pytest.mark.parametrize(
    "name,field",
    [
        ("DRY_RUN", "dry_run"),
        ("NO_HISTORY", "no_history"),
        ("LOG_SILENT", "log_silent"),
        ("ENCRYPTION_REQUIRED", "encryption_required"),
    ],
)
def test_booleans_accept_every_documented_spelling(name, field, raw, value):
    assert getattr(load(**{name: raw}), field) is value


@pytest.mark.parametrize("name", ["DRY_RUN", "NO_HISTORY", "LOG_SILENT", "ENCRYPTION_REQUIRED"])
@pytest.mark.parametrize("raw", ["2", "on", "", "truee"])
def test_bad_booleans_name_the_variable_and_the_accepted_values(name, raw):
    with pytest.raises(config.ConfigError, match=rf"{name}=.*1/0/true/false/yes/no"):
        load(**{name: raw})


@pytest.mark.parametrize("mode", ["api", "serverless"])
def test_launch_modes(mode):
    assert load(LAUNCH_MODE=mode).launch_mode == mode


@pytest.mark.parametrize("raw", ["API", "pod", "", "apii"])
def test_bad_launch_mode_lists_the_modes(raw):
    with pytest.raises(config.ConfigError, match=r"LAUNCH_MODE.*api, serverless"):
        load(LAUNCH_MODE=raw)


def test_response_format_is_ours_or_worker_comfyuis():
    assert load().response_format == "worker"
    assert load(RESPONSE_FORMAT="Worker-ComfyUI").response_format == "worker-comfyui"
    with pytest.raises(config.ConfigError, match=r"RESPONSE_FORMAT='runpod'.*worker, worker-comfyui"):
        load(RESPONSE_FORMAT="runpod")


@pytest.mark.parametrize("name,field", [("API_PORT", "api_port"), ("COMFY_PORT", "comfy_port")])
def test_ports(name, field):
    assert getattr(load(**{name: "80"}), field) == 80
    for bad in ("0", "65536", "http", "8.5"):
        with pytest.raises(config.ConfigError, match=name):
            load(**{name: bad})


def test_timeout_must_be_positive_seconds():
    assert load(JOB_TIMEOUT_S="2.5").job_timeout_s == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(config.ConfigError, match="JOB_TIMEOUT_S"):
            load(JOB_TIMEOUT_S=bad)


def test_paths_and_text_values():
    s = load(
        COMFYUI_MODEL_DIR="/data/models",
        COMFYUI_DIR="/srv/comfy",
        COMFY_PYTHON="/venv/bin/python",
        COMFY_ARGS="--lowvram --fast",
        API_KEY="k",
    )
    assert (s.model_dir, s.comfyui_dir, s.comfy_python, s.comfy_args, s.api_key) == (
        "/data/models",
        "/srv/comfy",
        "/venv/bin/python",
        "--lowvram --fast",
        "k",
    )
    with pytest.raises(config.ConfigError, match="COMFYUI_MODEL_DIR"):
        load(COMFYUI_MODEL_DIR="  ")


def test_empty_api_key_means_no_auth():
    assert load(API_KEY="").api_key is None


def test_encryption_required_without_a_key_says_how_to_make_one():
    with pytest.raises(config.ConfigError, match=r"WORKER_PRIVATE_KEY_B64.*make keygen"):
        config.load({})
    assert config.load({"ENCRYPTION_REQUIRED": "0"}).private_key is None


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_bad_private_key(bad):
    with pytest.raises(config.ConfigError, match="WORKER_PRIVATE_KEY_B64"):
        load(WORKER_PRIVATE_KEY_B64=bad)


def test_a_bad_previous_key_stops_the_start_naming_which():
    good = base64.b64encode(bytes(32)).decode()
    with pytest.raises(config.ConfigError) as bad:
        load(WORKER_PREVIOUS_KEYS_B64=f"{good},{base64.b64encode(b'short').decode()}")
    assert str(bad.value).startswith("WORKER_PREVIOUS_KEYS_B64 (key 2 of 2) decodes to 5 bytes")
    assert "\n" not in str(bad.value) and good not in str(bad.value)
    assert load(WORKER_PREVIOUS_KEYS_B64=f" {good} ,").previous_keys == (good,)


def test_private_key_decodes_to_32_bytes():
    assert len(load().private_key) == 32


def test_local_queue_settings():
    assert load().on_runpod is False
    assert load(RUNPOD_WEBHOOK_GET_JOB="https://api.runpod.ai/x?gpu=A").on_runpod is True
    assert load(LOCAL_ENDPOINT_ID="my-ep_1").local_endpoint_id == "my-ep_1"
    with pytest.raises(config.ConfigError, match="LOCAL_ENDPOINT_ID"):
        load(LOCAL_ENDPOINT_ID="a/b")


def test_describe_masks_secrets():
    text = config.describe(load(API_KEY="secret-api-key"))
    assert KEY not in text and "secret-api-key" not in text and "api_key=(set)" in text


def test_env_file(tmp_path):
    path = tmp_path / "env"
    path.write_text("# comment\nDRY_RUN=1\n\nAPI_PORT = 9000\n")
    assert config.read_env_file(str(path)) == {"DRY_RUN": "1", "API_PORT": "9000"}
    assert config.read_env_file(str(tmp_path / "missing")) == {}
    path.write_text("export X\n")
    with pytest.raises(config.ConfigError, match="NAME=value"):
        config.read_env_file(str(path))


def test_comfy_output_is_hidden_when_it_could_reveal_jobs():
    assert config.load({"ENCRYPTION_REQUIRED": "0"}).comfy_output_shown is True
    assert config.load({"ENCRYPTION_REQUIRED": "0", "LOG_SILENT": "1"}).comfy_output_shown is False
    assert load().comfy_output_shown is False  # a private key: encrypted jobs are possible
    assert load(COMFY_LOG="1").comfy_output_shown is True  # the operator's explicit choice
    assert config.load({"ENCRYPTION_REQUIRED": "0", "COMFY_LOG": "0"}).comfy_output_shown is False


def test_no_test_uses_the_machine_s_run_dir():
    """The guard of tests/conftest.py: a drain marker a stopped `make run` left in the default
    RUN_DIR is read by no test (a clean clone's `make test` after a first `make run` passes)."""
    default = config.Settings().run_dir
    built = load()
    assert built.run_dir != default and os.path.isdir(built.run_dir)
    assert os.environ["RUN_DIR"] != default  # and every process a test starts
    assert not os.path.exists(built.run_layout.drain_file)


def test_job_ttl_s_is_still_read_for_both_settings_it_split_into_and_a_new_name_wins():
    old = load(JOB_TTL_S="120")
    assert (old.job_keep_s, old.job_outcome_retry_s) == (120.0, 120.0)
    both = load(JOB_TTL_S="120", JOB_KEEP_S="30")
    assert (both.job_keep_s, both.job_outcome_retry_s) == (30.0, 120.0)
    with pytest.raises(config.ConfigError, match="JOB_TTL_S"):  # a bad value names what was set
        load(JOB_TTL_S="soon")
