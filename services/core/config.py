"""The worker's configuration: read once from the environment into one frozen object.

Every other module receives a `Settings`; nothing else reads `os.environ`, so what the
worker does is decided by what is printed here, and a bad value stops the start with a
message that names the variable.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from services.core import log_line
from services.core.run_dir import RunDir

MODES = ("api", "serverless")
RESPONSE_FORMATS = ("worker", "worker-comfyui")
MAX_INSTANCES = 64  # COMFY_INSTANCE (0-based) is checked against it too
GPU_VISIBILITY = (
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
)
_HOME = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


class ConfigError(ValueError):
    """A variable holds a value the worker cannot start with."""


SECRETS = (  # Settings fields never logged and never handed to ComfyUI
    "api_key",
    "private_key_b64",
    "previous_keys_b64",
    "runpod_worker_key",
    "bucket_secret_access_key",
    "hf_token",
    "civitai_token",
    "state_url",
    "webhook_secret",
    "otel_headers",
)
OTEL_SAMPLERS = (  # OTEL_TRACES_SAMPLER's values (services.core.tracing)
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


@dataclass(frozen=True)
class Settings:
    launch_mode: str = "serverless"
    api_port: int = 8000
    api_key: str | None = None
    api_keys_file: str | None = None  # named keys with scopes and limits (services.jobs.access)
    model_dir: str = "/workspace/models"
    baked_model_dir: str | None = None  # the image's own models, beside the volume's
    comfyui_dir: str = "/opt/ComfyUI"
    comfy_python: str = sys.executable
    comfy_port: int = 8188
    comfy_args: str = ""
    comfy_env: tuple[str, ...] = ()  # more variables ComfyUI may see (it never gets the secrets)
    comfy_device: str = "auto"
    comfy_instances: int | None = None  # None: `auto`, one per GPU; the entrypoint settles it
    comfy_instance: int = 0  # which of them this process is (supervisord sets it per program)
    gpu_visibility: tuple[tuple[str, str], ...] = ()  # the GPU runtimes' *_VISIBLE_DEVICES as set
    comfy_user: str = "comfy"  # ComfyUI's own user when the worker starts as root
    comfy_user_required: bool = False  # the image: no own user for ComfyUI stops the start
    cuda_driver_required: bool = False  # the image: an NVIDIA driver too old for torch's CUDA stops the start
    private_key_b64: str | None = None
    previous_keys_b64: str | None = None  # comma-separated keys still accepted after a rotation
    encryption_required: bool = True
    dry_run: bool = False
    no_history: bool = False
    response_format: str = "worker"  # or "worker-comfyui": the answer shape of that worker
    log_silent: bool = False
    log_format: str = "text"  # or "json": one object per line (services.core.logs)
    comfy_log: bool | None = None  # None: decided by comfy_output_shown
    job_timeout_s: float = 600.0
    replay_window_s: float = 600.0
    comfy_ready_timeout_s: float = 300.0
    comfy_submit_timeout_s: float = 60.0
    comfy_boot_timeout_s: float = 900.0  # a heavy GPU boot with many custom nodes takes minutes
    watch_fails: int = 3
    watch_probe_timeout_s: float = 3.0
    watch_max_exits: int = 5
    watch_exit_window_s: float = 300.0
    oom_restart_after: int = 3  # out-of-memory answers in a row on one instance that restart it
    gpu_checks: bool = True  # read failed prompts for GPU faults (services.comfy.device_faults)
    preflight: bool = True  # a computation on the device before each start is ready
    gpu_out_after: int = 3  # device faults or failed pre-flights within the window: out for good
    gpu_out_window_s: float = 3600.0
    max_queue_depth: int = 0  # jobs waiting for an instance beyond which new ones answer busy; 0: no limit
    run_dir: str = "/tmp/comfy-worker"
    max_request_mb: int = 64
    max_result_mb: float = 15.0
    warmup_workflow: str | None = None
    image_url_max_mb: float = 32.0
    image_url_timeout_s: float = 30.0
    bucket_endpoint_url: str | None = None
    bucket_access_key_id: str | None = None
    bucket_secret_access_key: str | None = None
    bucket_name: str = "comfy-worker-outputs"
    hf_token: str | None = None
    hf_endpoint: str = "https://huggingface.co"
    civitai_token: str | None = None
    allow_private_downloads: bool = False
    local_endpoint_id: str = "LOCAL"
    comfyui_source: str = "https://github.com/Comfy-Org/ComfyUI.git"
    # ComfyUI 0.3.64: docs/comfyui-protocol.md describes it and comfyui-requirements.lock is made for it
    comfyui_ref: str = "a125cd84b054a57729b5eecab930ca9408719832"
    comfyui_lock: str = os.path.join(_HOME, "comfyui-requirements.lock")
    comfyui_install_dir: str = os.path.join(_HOME, ".comfyui")
    runpod_job_url: str | None = None
    runpod_worker_key: str | None = None
    state_url: str | None = None  # Redis shared by a fleet of workers; unset: state stays in the process
    state_prefix: str = "comfy-worker"
    job_keep_s: float = 3600.0  # how long an ended async job's record is kept (JOB_TTL_S before)
    job_outcome_retry_s: float = 3600.0  # how long a fleet pod tries to write an outcome Redis does not take
    job_claim_timeout_s: float = 30.0  # a pod silent this long lost the jobs it took
    drain_timeout_s: float = 20.0  # SIGTERM: finish accepted work for this long, then cut it; 0: stop at once
    webhook_secret: str | None = None  # whsec_<base64> keys, space-separated: each signs every webhook
    webhook_max_kb: float = 1024.0  # a webhook body above this leaves the result out
    webhook_timeout_s: float = 15.0  # each attempt's limit
    webhook_retry_s: tuple[float, ...] = (0.0, 5.0, 30.0, 120.0, 300.0)  # attempts after a job's end
    allow_private_webhooks: bool = False  # webhooks to private, loopback or link-local addresses
    model_cache_gb: float | None = None  # cap of on-demand model downloads; None: no cap
    model_lock_stale_s: float = 60.0  # a transfer lock unchanged this long was left by a dead worker
    model_fetch_timeout_s: float = 1800.0  # a job's model transfers, beside its own timeout
    templates_dir: tuple[str, ...] | None = None  # folders of templates; None: `templates` beside the volume
    pid1: int | None = None  # the worker's PID 1 (supervise sets it): the tree ends when it is gone
    # OpenTelemetry's standard variables (services.core.tracing); no endpoint: nothing is traced
    otel_endpoint: str | None = None  # OTLP/HTTP base URL: traces go to <it>/v1/traces
    otel_traces_url: str | None = None  # the traces URL itself, when it is not <base>/v1/traces
    otel_headers: str | None = None  # `k=v,k=v` sent with each export (an exporter's token)
    otel_service_name: str = "comfy-worker"
    otel_resource_attributes: tuple[tuple[str, str], ...] = ()
    otel_traces_sampler: str = "parentbased_always_on"
    otel_traces_sampler_arg: float = 1.0

    @property
    def secret_values(self) -> frozenset[str]:
        values = {v for v in (getattr(self, name) for name in SECRETS) if v} | set(self.previous_keys)
        return frozenset(values | {v.strip() for v in values if v.strip()})

    @property
    def otel_traces_endpoint(self) -> str | None:
        """Where spans are exported, or None: tracing off."""
        if self.otel_traces_url:
            return self.otel_traces_url
        return f"{self.otel_endpoint}/v1/traces" if self.otel_endpoint else None

    @property
    def otel_header_pairs(self) -> dict[str, str]:
        return dict(_pairs("OTEL_EXPORTER_OTLP_HEADERS", self.otel_headers or ""))

    @property
    def previous_keys(self) -> tuple[str, ...]:
        """Worker keys still accepted after a rotation (WORKER_PREVIOUS_KEYS_B64), base64."""
        return tuple(self.previous_keys_b64.split(",")) if self.previous_keys_b64 else ()

    @property
    def on_runpod(self) -> bool:
        """RunPod hands its workers a job-take URL; without one we serve our own local queue."""
        return self.runpod_job_url is not None

    @property
    def private_key(self) -> bytes | None:
        return base64.b64decode(self.private_key_b64) if self.private_key_b64 else None

    @property
    def comfy_output_shown(self) -> bool:
        """ComfyUI prints prompt details (validation failures name inputs and values), so its
        output is dropped under LOG_SILENT and whenever encrypted jobs are possible, unless the
        operator asks for it with COMFY_LOG=1 (for debugging, knowing what it may reveal)."""
        if self.comfy_log is not None:
            return self.comfy_log
        return not self.log_silent and self.private_key_b64 is None

    @property
    def instance_count(self) -> int:
        return self.comfy_instances or 1

    def instance(self, number: int) -> Settings:
        """The settings of ComfyUI instance `number`: its own port, folders and start count."""
        return dataclasses.replace(self, comfy_instance=number)

    @property
    def comfy_program(self) -> str:
        """Its supervisord program: `comfy` for the first, as with a single ComfyUI."""
        return "comfy" if self.comfy_instance == 0 else f"comfy-{self.comfy_instance}"

    @property
    def instance_port(self) -> int:
        return self.comfy_port + self.comfy_instance

    @property
    def comfy_url(self) -> str:
        return f"http://127.0.0.1:{self.instance_port}"

    @property
    def run_layout(self) -> RunDir:
        """Where each shared file lives in RUN_DIR (services.core.run_dir)."""
        return RunDir(self.run_dir)

    @property
    def supervisor_socket(self) -> str:
        return self.run_layout.supervisor_socket

    @property
    def comfy_starts_file(self) -> str:
        """How often ComfyUI was started: written by the launcher, read for /metrics."""
        return self.run_layout.starts_file(self.comfy_program)

    def comfy_folder(self, kind: str) -> str:
        """This instance's ComfyUI input, output, temp, user or home folder."""
        return self.run_layout.io(self.comfy_program, kind)

    @property
    def template_folders(self) -> tuple[str, ...]:
        """TEMPLATES_DIR, or the `templates` folder beside the model volume."""
        if self.templates_dir is not None:
            return self.templates_dir
        return (os.path.join(os.path.dirname(os.path.normpath(self.model_dir)), "templates"),)

    @property
    def comfy_io_dir(self) -> str:
        """Parent of ComfyUI's input/output/temp folders, owned by the worker."""
        return self.run_layout.comfy_dir(self.comfy_program)


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use one of 1/0/true/false/yes/no")


def _int_range(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number ({low}..{high})") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} is out of range; use {low}..{high}")
        return value

    return parse


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number (> 0)") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a finite number greater than 0")
    return value


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds (>= 0)") from None
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a finite number of seconds, 0 or more")
    return value


def _webhook_secret(name: str, raw: str) -> str | None:
    keys = raw.split()
    for key in keys:
        try:
            size = len(base64.b64decode(key.removeprefix("whsec_"), validate=True))
        except ValueError:
            size = 0
        if not key.startswith("whsec_") or size < 24:
            raise ConfigError(
                f"{name}: each key is whsec_ followed by base64 of at least 24 random bytes "
                "(make keygen prints one); several are separated by spaces"
            )
    return " ".join(keys) or None


def _schedule(name: str, raw: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in raw.split(","))
    except ValueError:
        delays = ()
    if not 1 <= len(delays) <= 10 or not all(0 <= d <= 3600 for d in delays):
        raise ConfigError(f"{name}={raw!r} must be 1 to 10 comma-separated delays in seconds (0..3600)")
    return delays


def _optional_positive_float(name: str, raw: str) -> float | None:
    return _positive_float(name, raw) if raw.strip() else None


def _mode(name: str, raw: str) -> str:
    value = raw.strip()
    if value not in MODES:
        raise ConfigError(f"{name}={raw!r} is not a launch mode; use one of: {', '.join(MODES)}")
    return value


def _log_format(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("text", "json"):
        raise ConfigError(f"{name}={raw!r} must be text or json")
    return value


def log_format_of(environ: Mapping[str, str]) -> str:
    """LOG_FORMAT for the lines a program says before its settings load (a bad value: text)."""
    value = environ.get("LOG_FORMAT", "text").strip().lower()
    return value if value in ("text", "json") else "text"


def _response_format(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in RESPONSE_FORMATS:
        raise ConfigError(f"{name}={raw!r} is not an answer shape; use one of: {', '.join(RESPONSE_FORMATS)}")
    return value


def _instances(name: str, raw: str) -> int | None:
    value = raw.strip().lower()
    if value == "auto":
        return None
    if not value.isdigit() or not 1 <= int(value) <= MAX_INSTANCES:
        raise ConfigError(
            f"{name}={raw!r} is not a number of ComfyUI instances; use auto (one per GPU) or "
            f"a whole number from 1 to {MAX_INSTANCES}"
        )
    return int(value)


def _device(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("auto", "cpu"):
        raise ConfigError(
            f"{name}={raw!r} is not a device choice; use auto (a GPU when one is visible) or cpu"
        )
    return value


def _folders(name: str, raw: str) -> tuple[str, ...]:
    """Absolute folders separated by ':', like PATH (the volume's and the image's own)."""
    folders = tuple(part for part in raw.split(":") if part)
    relative = [folder for folder in folders if not os.path.isabs(folder)]
    if not folders or relative:
        raise ConfigError(f"{name} must list absolute folders separated by ':', got {raw!r}")
    return folders


def _names(name: str, raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise ConfigError(f"{name} holds {bad[0]!r}, not a variable name; give names separated by commas")
    return names


def _prefix(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or not all(c.isalnum() or c in "-_.:" for c in value):
        raise ConfigError(f"{name}={raw!r} must be letters, digits, '-', '_', '.' or ':'")
    return value


def _redis_url(name: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name} must be a redis://, rediss:// or unix:// URL (its value is not shown)")
    try:
        urllib.parse.urlsplit(value).port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ConfigError(f"{name} holds a port that is not a number (its value is not shown)") from None
    return value


def _text(_name: str, raw: str) -> str:
    return raw


def _optional(_name: str, raw: str) -> str | None:
    return raw or None


def _path(name: str, raw: str) -> str:
    if not raw.strip():
        raise ConfigError(f"{name} is empty; give a folder path")
    return os.path.abspath(raw)


def _optional_path(name: str, raw: str) -> str | None:
    return _path(name, raw) if raw.strip() else None


def _endpoint_id(name: str, raw: str) -> str:
    if not raw or not all(c.isalnum() or c in "-_" for c in raw):
        raise ConfigError(f"{name}={raw!r} must be letters, digits, '-' or '_'")
    return raw


def _http_url(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={raw!r} must be an http(s) URL")
    return value


def _optional_http_url(name: str, raw: str) -> str | None:
    return _http_url(name, raw) if raw.strip() else None


def _pairs(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """`k=v,k=v` (values percent-decoded), as OpenTelemetry's variables write them."""
    pairs = []
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{name} must be key=value pairs separated by commas (its value is not shown)")
        pairs.append((key.strip(), urllib.parse.unquote(value.strip())))
    return tuple(pairs)


def _headers(name: str, raw: str) -> str | None:
    _pairs(name, raw)
    return raw or None


def _sampler(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in OTEL_SAMPLERS:
        raise ConfigError(f"{name}={raw!r} is not a sampler; use one of: {', '.join(OTEL_SAMPLERS)}")
    return value


def _ratio(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={raw!r} must be a number from 0 to 1")
    return value


def _commit(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if not 7 <= len(value) <= 40 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError(f"{name}={raw!r} must be a commit hash (7 to 40 hex digits), not a branch or tag")
    return value


def _private_key(name: str, raw: str) -> str | None:
    if not raw.strip():
        return None
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name} is not valid base64; {_KEYGEN_HINT}") from None
    if len(key) != 32:
        raise ConfigError(f"{name} decodes to {len(key)} bytes, a Curve25519 key has 32; {_KEYGEN_HINT}")
    return raw.strip()


def _previous_keys(name: str, raw: str) -> str | None:
    """Comma-separated keys, each checked like WORKER_PRIVATE_KEY_B64 (the error names which)."""
    keys = [part.strip() for part in raw.split(",") if part.strip()]
    for number, key in enumerate(keys, 1):
        _private_key(f"{name} (key {number} of {len(keys)})", key)
    return ",".join(keys) or None


_KEYGEN_HINT = "make one with `make keygen` (in the image: `python -m services.container.keygen`)"

# variable name -> (Settings field, parser)
_VARIABLES: dict[str, tuple[str, object]] = {
    "LAUNCH_MODE": ("launch_mode", _mode),
    "API_PORT": ("api_port", _int_range(1, 65535)),
    "API_KEY": ("api_key", _optional),
    "API_KEYS_FILE": ("api_keys_file", _optional_path),
    "COMFYUI_MODEL_DIR": ("model_dir", _path),
    "COMFYUI_BAKED_MODEL_DIR": ("baked_model_dir", _optional_path),
    "COMFYUI_DIR": ("comfyui_dir", _path),
    "COMFY_PYTHON": ("comfy_python", _path),
    "COMFY_PORT": ("comfy_port", _int_range(1, 65535)),
    "COMFY_ARGS": ("comfy_args", _text),
    "COMFY_ENV": ("comfy_env", _names),
    "COMFY_DEVICE": ("comfy_device", _device),
    "COMFY_INSTANCES": ("comfy_instances", _instances),
    "COMFY_INSTANCE": ("comfy_instance", _int_range(0, MAX_INSTANCES - 1)),
    "WORKER_PID1": ("pid1", _int_range(1, 2**22)),
    "COMFY_USER": ("comfy_user", _text),
    "COMFY_USER_REQUIRED": ("comfy_user_required", _bool),
    "CUDA_DRIVER_REQUIRED": ("cuda_driver_required", _bool),
    "WORKER_PRIVATE_KEY_B64": ("private_key_b64", _private_key),
    "WORKER_PREVIOUS_KEYS_B64": ("previous_keys_b64", _previous_keys),
    "ENCRYPTION_REQUIRED": ("encryption_required", _bool),
    "DRY_RUN": ("dry_run", _bool),
    "NO_HISTORY": ("no_history", _bool),
    "RESPONSE_FORMAT": ("response_format", _response_format),
    "LOG_SILENT": ("log_silent", _bool),
    "LOG_FORMAT": ("log_format", _log_format),
    "COMFY_LOG": ("comfy_log", _bool),
    "JOB_TIMEOUT_S": ("job_timeout_s", _positive_float),
    "REPLAY_WINDOW_S": ("replay_window_s", _positive_float),
    "COMFY_READY_TIMEOUT_S": ("comfy_ready_timeout_s", _positive_float),
    "COMFY_SUBMIT_TIMEOUT_S": ("comfy_submit_timeout_s", _positive_float),
    "COMFY_BOOT_TIMEOUT_S": ("comfy_boot_timeout_s", _positive_float),
    "WATCH_FAILS": ("watch_fails", _int_range(1, 100)),
    "WATCH_PROBE_TIMEOUT_S": ("watch_probe_timeout_s", _positive_float),
    "WATCH_MAX_EXITS": ("watch_max_exits", _int_range(1, 1000)),
    "WATCH_EXIT_WINDOW_S": ("watch_exit_window_s", _positive_float),
    "OOM_RESTART_AFTER": ("oom_restart_after", _int_range(1, 1000)),
    "GPU_CHECKS": ("gpu_checks", _bool),
    "PREFLIGHT": ("preflight", _bool),
    "GPU_OUT_AFTER": ("gpu_out_after", _int_range(1, 1000)),
    "GPU_OUT_WINDOW_S": ("gpu_out_window_s", _positive_float),
    "MAX_QUEUE_DEPTH": ("max_queue_depth", _int_range(0, 100000)),
    "RUN_DIR": ("run_dir", _path),
    "MAX_REQUEST_MB": ("max_request_mb", _int_range(1, 4096)),
    "MAX_RESULT_MB": ("max_result_mb", _positive_float),
    "WARMUP_WORKFLOW": ("warmup_workflow", _optional_path),
    "IMAGE_URL_MAX_MB": ("image_url_max_mb", _positive_float),
    "IMAGE_URL_TIMEOUT_S": ("image_url_timeout_s", _positive_float),
    "BUCKET_ENDPOINT_URL": ("bucket_endpoint_url", _optional),
    "BUCKET_ACCESS_KEY_ID": ("bucket_access_key_id", _optional),
    "BUCKET_SECRET_ACCESS_KEY": ("bucket_secret_access_key", _optional),
    "BUCKET_NAME": ("bucket_name", _text),
    "HF_TOKEN": ("hf_token", _optional),
    "HF_ENDPOINT": ("hf_endpoint", _http_url),
    "CIVITAI_TOKEN": ("civitai_token", _optional),
    "ALLOW_PRIVATE_DOWNLOADS": ("allow_private_downloads", _bool),
    "LOCAL_ENDPOINT_ID": ("local_endpoint_id", _endpoint_id),
    "COMFYUI_SOURCE": ("comfyui_source", _text),
    "COMFYUI_REF": ("comfyui_ref", _commit),
    "COMFYUI_INSTALL_DIR": ("comfyui_install_dir", _path),
    "COMFYUI_LOCK": ("comfyui_lock", _path),
    "RUNPOD_WEBHOOK_GET_JOB": ("runpod_job_url", _optional),
    "RUNPOD_AI_API_KEY": ("runpod_worker_key", _optional),
    "STATE_URL": ("state_url", _redis_url),
    "STATE_PREFIX": ("state_prefix", _prefix),
    "JOB_KEEP_S": ("job_keep_s", _positive_float),
    "JOB_OUTCOME_RETRY_S": ("job_outcome_retry_s", _positive_float),
    "JOB_CLAIM_TIMEOUT_S": ("job_claim_timeout_s", _positive_float),
    "DRAIN_TIMEOUT_S": ("drain_timeout_s", _seconds),
    "WEBHOOK_SECRET": ("webhook_secret", _webhook_secret),
    "WEBHOOK_MAX_KB": ("webhook_max_kb", _positive_float),
    "WEBHOOK_TIMEOUT_S": ("webhook_timeout_s", _positive_float),
    "WEBHOOK_RETRY_S": ("webhook_retry_s", _schedule),
    "ALLOW_PRIVATE_WEBHOOKS": ("allow_private_webhooks", _bool),
    "MODEL_CACHE_GB": ("model_cache_gb", _optional_positive_float),
    "MODEL_LOCK_STALE_S": ("model_lock_stale_s", _positive_float),
    "MODEL_FETCH_TIMEOUT_S": ("model_fetch_timeout_s", _positive_float),
    "TEMPLATES_DIR": ("templates_dir", _folders),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("otel_endpoint", _optional_http_url),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("otel_traces_url", _optional_http_url),
    "OTEL_EXPORTER_OTLP_HEADERS": ("otel_headers", _headers),
    "OTEL_SERVICE_NAME": ("otel_service_name", _text),
    "OTEL_RESOURCE_ATTRIBUTES": ("otel_resource_attributes", _pairs),
    "OTEL_TRACES_SAMPLER": ("otel_traces_sampler", _sampler),
    "OTEL_TRACES_SAMPLER_ARG": ("otel_traces_sampler_arg", _ratio),
}


RENAMED = {  # a variable's old name, still read when the new one is not set
    "JOB_KEEP_S": "JOB_TTL_S",
    "JOB_OUTCOME_RETRY_S": "JOB_TTL_S",
}


def secret_variables() -> frozenset[str]:
    """The variables that hold the SECRETS fields: never passed on, whatever their value."""
    return frozenset(name for name, (field, _parse) in _VARIABLES.items() if field in SECRETS)


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from `environ` (the process environment by default)."""
    env = os.environ if environ is None else environ
    values = {}
    for name, (field, parse) in _VARIABLES.items():
        if name in env:
            values[field] = parse(name, env[name])
        elif (old := RENAMED.get(name)) is not None and old in env:
            values[field] = parse(old, env[old])
    values["gpu_visibility"] = tuple((name, env[name]) for name in GPU_VISIBILITY if name in env)
    settings = Settings(**values)
    if settings.encryption_required and not settings.private_key_b64:
        raise ConfigError(
            "ENCRYPTION_REQUIRED=1 but WORKER_PRIVATE_KEY_B64 is not set; "
            f"{_KEYGEN_HINT} and set WORKER_PRIVATE_KEY_B64, or set ENCRYPTION_REQUIRED=0"
        )
    return settings


def load_or_exit(program: str) -> Settings:
    """The settings of a supervised program; a bad value ends it with one line naming the
    variable (exit 2), never a traceback."""
    try:
        return load()
    except ConfigError as exc:
        log_line.write(program, f"configuration error: {exc}", log_format_of(os.environ), "ERROR")
        raise SystemExit(2) from None


def describe(settings: Settings) -> str:
    """One line per setting for the start-up log, with secrets masked."""
    lines = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name in SECRETS:
            value = "(set)" if value else "(unset)"
        lines.append(f"{f.name}={value}")
    return " ".join(lines)


def load_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """One boolean variable, parsed as `load` would (for decisions made before `load`)."""
    return _bool(name, environ[name]) if name in environ else default


def read_env_file(path: str) -> dict[str, str]:
    """`NAME=value` lines of a local env file (no shell syntax); a missing file is empty."""
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return values
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"{path}:{number} is not a NAME=value line")
        values[name.strip()] = value.strip()
    return values
