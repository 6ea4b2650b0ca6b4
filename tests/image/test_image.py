"""The image, built and run as a platform runs it (make image-test): the Dockerfile built with
podman on a local Debian base, then each check against a container of it. Containers use the
host's network namespace, so everything they and the tests talk to stays on loopback."""

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest
import requests

from client.envelope_client import open_answer, seal_request
from services.jobs import envelopes
from tests import comfyui_source
from tests.file_server import FileServer
from tests.otlp_receiver import OtlpReceiver
from tests.stack import ROOT, copy_checkout, free_port, wait_until
from tests.workflows import decode_png, empty_image, slow_workflow

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = "localhost/comfy-worker-base:bookworm"
IMAGE = "localhost/comfy-worker:image-test"
IMAGE_CU128 = "localhost/comfy-worker:image-test-cu128"
TOOLS = {"podman": "podman", "buildah": "buildah", "debootstrap": "debootstrap", "runc": "runc"}
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# what this machine's own pip uses (a local package mirror and its configuration): lent to the
# build's RUN steps, so the image installs the same files the host would
PIP_MOUNTS = ("/opt/pypi", "/opt/pypi-more", "/opt/wheels", "/root/.config/pip/pip.conf")


def podman(*args, check=True, timeout=600, **kwargs):
    env = {**os.environ, "CONTAINERS_CONF": os.path.join(HERE, "containers.conf")}
    result = subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


def ensure_tools():
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.getuid() != 0:
        pytest.fail(
            f"make image-test needs {', '.join(missing)} (Debian packages); install them as root", False
        )
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, timeout=600)


def ensure_base():
    """A Debian bookworm base with python3 made here (no registry is reachable), trusting the
    same certificate authorities as this machine."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    rootfs = tempfile.mkdtemp(prefix="rootfs-")
    try:
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates,curl",
                "bookworm",
                rootfs,
                DEBIAN_MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        extra = "/usr/local/share/ca-certificates"
        if os.path.isdir(extra):
            shutil.copytree(extra, rootfs + extra, dirs_exist_ok=True)
        subprocess.run(["chroot", rootfs, "update-ca-certificates"], check=True, capture_output=True)
        with open(os.path.join(rootfs, "etc", "pip.conf"), "w") as handle:
            handle.write("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(os.path.join(rootfs, junk), ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        podman("import", "-", BASE, stdin=tar.stdout)
        tar.wait()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def build(context, *extra, tag=IMAGE):
    args = ["build", "--format", "docker", "-t", tag, "--build-arg", f"BASE_IMAGE={BASE}"]
    for mount in PIP_MOUNTS:
        if os.path.exists(mount):
            args += ["--volume", f"{mount}:{mount}:ro"]
    started = time.monotonic()
    podman(*args, *extra, context, timeout=3600)
    return time.monotonic() - started


def context_copy(folder):
    """The build context as a fresh clone would have it, plus the ComfyUI tarball."""
    copy_checkout(folder)
    source = comfyui_source.tarball(os.path.join(folder, "docker", "comfyui-source"))
    if not source.startswith(folder):
        shutil.copy(source, os.path.join(folder, "docker", "comfyui-source"))
    return "docker/comfyui-source/" + os.path.basename(source)


@pytest.fixture(scope="session")
def image():
    ensure_tools()
    ensure_base()
    context = tempfile.mkdtemp(prefix="image-context-")
    try:
        source = context_copy(context)
        seconds = build(context, "--build-arg", f"COMFYUI_SOURCE={source}")
        keygen = os.path.join(context, "services", "keygen.py")
        with open(keygen, "a") as handle:
            handle.write("\n# a change of the project's code\n")
        again = build(context, "--build-arg", f"COMFYUI_SOURCE={source}")
    finally:
        shutil.rmtree(context, ignore_errors=True)
    size = json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Size"]
    base = json.loads(podman("image", "inspect", BASE).stdout)[0]["Size"]
    print(
        f"\n[image] built in {seconds:.0f} s (layer cache as it was), rebuilt after a code change in "
        f"{again:.1f} s; image {size / 1e9:.2f} GB ({compressed(IMAGE) / 1e9:.2f} GB gzip -1) on a "
        f"{base / 1e6:.0f} MB base"
    )
    return IMAGE


@pytest.fixture(scope="session")
def image_cu128(image):
    """The flavor for NVIDIA drivers 525-579 (TORCH_FLAVOR=cu128), from the same Dockerfile: the
    layers before ComfyUI's environment are the default flavor's."""
    context = tempfile.mkdtemp(prefix="image-context-")
    try:
        source = context_copy(context)
        seconds = build(
            context,
            "--build-arg",
            f"COMFYUI_SOURCE={source}",
            "--build-arg",
            "TORCH_FLAVOR=cu128",
            tag=IMAGE_CU128,
        )
    finally:
        shutil.rmtree(context, ignore_errors=True)
    size = json.loads(podman("image", "inspect", IMAGE_CU128).stdout)[0]["Size"]
    print(
        f"\n[image] cu128 flavor built in {seconds:.0f} s; image {size / 1e9:.2f} GB "
        f"({compressed(IMAGE_CU128) / 1e9:.2f} GB gzip -1)"
    )
    return IMAGE_CU128


def compressed(tag):
    """Bytes of `podman save | gzip -1`: about what a registry sends on a first pull."""
    save = subprocess.Popen(["podman", "save", tag], stdout=subprocess.PIPE)
    gzip = subprocess.run(["gzip", "-1"], stdin=save.stdout, stdout=subprocess.PIPE, check=True)
    save.wait()
    return len(gzip.stdout)


class Container:
    """One container of the image on the host's network, removed at the end."""

    def __init__(self, image, env, *options, mode="api"):
        self.name = f"cw-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.private, self.public = envelopes.keypair()
        base = {
            "LAUNCH_MODE": mode,
            "API_PORT": str(self.port),
            "COMFY_PORT": str(free_port()),
            "WORKER_PRIVATE_KEY_B64": self.private,
        }
        args = ["run", "-d", "--name", self.name, "--network", "host", *options]
        for name, value in {**base, **env}.items():
            args += ["-e", f"{name}={value}"]
        podman(*args, image)
        self.url = f"http://127.0.0.1:{self.port}"

    def logs(self):
        return podman("logs", self.name, check=False).stdout + podman("logs", self.name, check=False).stderr

    def answers(self, path):
        try:
            return requests.get(self.url + path, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_http(self, path, timeout=180):
        wait_until(lambda: self.answers(path) or not self.running(), timeout, f"{path} of {self.name}")
        assert self.running(), self.logs()[-4000:]

    def running(self):
        state = podman("inspect", "-f", "{{.State.Running}}", self.name, check=False).stdout.strip()
        return state == "true"

    def exec(self, *command):
        return podman("exec", self.name, *command, check=False)

    def remove(self):
        podman("rm", "-f", "-t", "0", self.name, check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def sealed_run(container, payload, path="/run"):
    request, ephemeral = seal_request(payload, container.public)
    answer = requests.post(container.url + path, json=request, timeout=180).json()
    return open_answer(answer, ephemeral, container.public)


def test_api_dry_run_is_healthy_and_answers_an_encrypted_request(image):
    with Container(image, {"DRY_RUN": "1"}) as container:
        container.wait_http("/healthz")
        assert (
            requests.get(container.url + "/healthz", timeout=5).json()["server_public_key_b64"]
            == container.public
        )
        healthy = lambda: podman("healthcheck", "run", container.name, check=False).returncode == 0  # noqa: E731
        wait_until(healthy, 30, "the image's HEALTHCHECK to pass")  # `api` is RUNNING after startsecs
        result = sealed_run(container, {"workflow": empty_image()})
        assert result == {"status": "ok", "dry_run": True, "nodes": 2, "images": 0}


def test_serverless_dry_run_answers_runsync_traced_with_json_logs(image):
    """The image's serverless worker with LOG_FORMAT=json and an OTLP collector: it answers an
    encrypted job, exports its trace, continuing the input's `traceparent`, and prints JSON only."""
    receiver = OtlpReceiver()
    traced = {
        "LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    try:
        with Container(image, {"DRY_RUN": "1", **traced}, mode="serverless") as container:
            container.wait_http("/v2/LOCAL/health")
            request, ephemeral = seal_request({"workflow": empty_image()}, container.public)
            job_input = {**request, "traceparent": f"00-{trace_id}-{span_id}-01"}
            job = requests.post(
                container.url + "/v2/LOCAL/runsync", json={"input": job_input}, timeout=120
            ).json()
            assert job["status"] == "COMPLETED", job
            assert open_answer(job["output"], ephemeral, container.public)["dry_run"] is True
            assert job["output"]["trace_id"] == trace_id
            [job_span] = [s for s in receiver.wait_for(trace_id, {"job", "seal"}) if s.name == "job"]
            assert job_span.parent_id == span_id and job_span.resource["comfy_worker.program"] == "handler"
            lines = [line for line in container.logs().splitlines() if line.strip()]
        assert lines and all(line.startswith("{") and json.loads(line)["program"] for line in lines), lines[
            :5
        ]
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def comfy_container(image):
    """The real ComfyUI inside the image (CPU), a mounted model volume."""
    volume = tempfile.mkdtemp(prefix="volume-")
    shutil.copytree(
        os.path.join(ROOT, "templates", "noise-card"), os.path.join(volume, "templates", "volume-card")
    )
    container = Container(image, {"ALLOW_PRIVATE_DOWNLOADS": "1"}, "-v", f"{volume}:/workspace")
    container.volume = volume
    container.wait_http("/readyz")
    yield container
    container.remove()
    shutil.rmtree(volume, ignore_errors=True)


@pytest.mark.parametrize(("flavor", "cuda"), [("default", "13.0"), ("cu128", "12.8")])
def test_each_flavor_has_its_torch_checks_the_driver_and_answers_an_encrypted_job(request, flavor, cuda):
    tag = request.getfixturevalue("image" if flavor == "default" else "image_cu128")
    with Container(tag, {}) as container:
        container.wait_http("/readyz")
        torch = container.exec(
            "/opt/comfyui-venv/bin/python", "-c", "import torch; print(torch.version.cuda)"
        )
        assert torch.stdout.strip() == cuda, torch.stderr
        assert container.logs().count("[entrypoint] no NVIDIA GPU: no driver to check") == 1
        result = sealed_run(container, {"workflow": empty_image(12, 10, 0x00FF00)})
        assert decode_png(result["outputs"][0]).convert("RGB").getpixel((1, 1)) == (0, 255, 0)


def test_real_comfyui_in_the_image_answers_an_encrypted_job(comfy_container):
    result = sealed_run(comfy_container, {"workflow": empty_image(40, 30, 0x00FF00)})
    image = decode_png(result["outputs"][0])
    assert image.size == (40, 30) and image.convert("RGB").getpixel((1, 1)) == (0, 255, 0)


def test_comfyui_s_user_loads_the_workers_preflight_node_and_its_start_passes_it(comfy_container):
    """The node is read by ComfyUI's own user from the worker's folder in RUN_DIR."""
    [instance] = requests.get(comfy_container.url + "/healthz", timeout=5).json()["comfy"]["instances"]
    assert instance["preflight"] == "passed" and instance["broken"] is None
    assert "instance 0: pre-flight passed on cpu" in comfy_container.logs()


def test_the_image_serves_its_example_templates_and_the_volumes_own(comfy_container):
    health = lambda: requests.get(comfy_container.url + "/healthz", timeout=5).json()["templates"]  # noqa: E731
    wait_until(lambda: health()["checked_with_comfyui"], 120, "the templates' check against ComfyUI")
    assert health()["serving"] == ["noise-card", "soft-webp", "volume-card"] and health()["rejected"] == []
    body = {"template": "volume-card", "params": {"width": 24, "height": 16, "seed": 11}}
    result = sealed_run(comfy_container, body, path="/templates/volume-card/run")
    assert result["params"]["seed"] == 11 and decode_png(result["outputs"][0]).size == (24, 16)


def test_the_slim_base_carries_what_custom_nodes_need_at_run_time(comfy_container):
    """git for custom nodes, libGL and GLib for OpenCV (docs/deploy.md); PyAV brings FFmpeg."""
    assert comfy_container.exec("git", "--version").returncode == 0
    libraries = "import ctypes; ctypes.CDLL('libGL.so.1'); ctypes.CDLL('libglib-2.0.so.0'); import av"
    loaded = comfy_container.exec("/opt/comfyui-venv/bin/python", "-c", libraries)
    assert loaded.returncode == 0, loaded.stderr


def test_comfyui_runs_as_its_own_user_without_the_workers_secrets(comfy_container):
    """What a custom node could do, as ComfyUI's user: read every process's environment and
    command line, and the run folder."""
    script = (
        "import os, sys\n"
        "key = sys.argv[1]\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    if int(pid) == os.getpid():\n"
        "        continue\n"
        "    cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
        "    uid = open(f'/proc/{pid}/status').read().split('Uid:')[1].split()[0]\n"
        "    try:\n"
        "        env = open(f'/proc/{pid}/environ', 'rb').read().decode()\n"
        "    except OSError:\n"
        "        env = 'unreadable'\n"
        "    print(uid, 'comfyui' if cmd.startswith('/opt/comfyui-venv/bin/python -u') else 'other',\n"
        "          'leak' if key in env + cmd else 'clean', 'readable' if env != 'unreadable' else 'unreadable')\n"
        "for folder, _, files in os.walk('/tmp/comfy-worker'):\n"
        "    for name in files:\n"
        "        try:\n"
        "            print('file', 'leak' if key in open(os.path.join(folder, name), errors='replace').read() else 'clean')\n"
        "        except OSError:\n"
        "            pass\n"
    )
    result = podman(
        "exec",
        "--user",
        "comfy",
        comfy_container.name,
        "/opt/venv/bin/python",
        "-c",
        script,
        comfy_container.private,
    )
    rows = [line.split() for line in result.stdout.splitlines()]
    comfy_uid = podman("exec", comfy_container.name, "id", "-u", "comfy").stdout.strip()
    assert comfy_uid != "0"
    assert [row[0] for row in rows if row[1] == "comfyui"] == [comfy_uid]  # ComfyUI runs as comfy
    assert not [row for row in rows if "leak" in row], rows
    assert all(row[3] == "unreadable" for row in rows if row[0] == "0")  # root's processes are closed to it


def test_a_mounted_volume_receives_a_download(comfy_container):
    server = FileServer()
    server.files = {"tiny.safetensors": os.urandom(4096)}
    try:
        item = {"type": "loras", "url": f"{server.url}/file/tiny.safetensors"}
        response = requests.post(
            comfy_container.url + "/download", json={"items": [item], "wait": True}, timeout=60
        )
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    path = os.path.join(comfy_container.volume, "models", "loras", "tiny.safetensors")
    with open(path, "rb") as handle:
        assert handle.read() == server.files["tiny.safetensors"]
    assert os.stat(path).st_uid == 0  # written by the worker, which runs as root
    listed = requests.get(comfy_container.url + "/models/ls", params={"type": "loras"}, timeout=10).json()
    assert [m["name"] for m in listed["models"]["loras"]] == ["tiny.safetensors"]


def test_no_zombie_remains_after_a_process_inside_is_killed(comfy_container):
    program = comfy_container.exec("/opt/venv/bin/python", "-c", PROGRAM_PID).stdout.strip()
    assert program.isdigit(), program
    kill = f"import os, signal; os.kill({program}, signal.SIGKILL)"
    assert comfy_container.exec("/opt/venv/bin/python", "-c", kill).returncode == 0  # ComfyUI is orphaned
    comfy_container.wait_http("/readyz")
    time.sleep(3)
    states = comfy_container.exec("/opt/venv/bin/python", "-c", STATES).stdout.split()
    assert "Z" not in states, states


def test_sigterm_drains_the_job_running_and_exits_0_once_its_result_is_fetched(image):
    """`docker stop`'s signal to PID 1, with the image's DRAIN_TIMEOUT_S (20 s): no new work,
    the job runs to its end, its result is served, and the container then exits 0 at once."""
    with Container(image, {}) as container:
        container.wait_http("/readyz")
        request, ephemeral = seal_request({"workflow": slow_workflow(8)}, container.public)
        job = requests.post(container.url + "/run", params={"async": "1"}, json=request, timeout=30).json()

        def state():
            return requests.get(container.url + f"/jobs/{job['id']}", timeout=10).json()

        wait_until(lambda: state()["state"] == "running", 30, "the job to run")
        podman("kill", "--signal", "TERM", container.name)
        wait_until(
            lambda: requests.get(container.url + "/readyz", timeout=5).status_code == 503, 10, "the drain"
        )
        refused = requests.post(container.url + "/run", json=request, timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5", refused.text
        wait_until(lambda: state()["state"] == "completed", 60, "the job to end")
        result = open_answer(state()["result"], ephemeral, container.public)
        fetched = time.monotonic()
        assert result["outputs"], result
        code = podman("wait", container.name, timeout=60).stdout.strip()
        elapsed = time.monotonic() - fetched
        assert code == "0" and elapsed < 15, (code, elapsed, container.logs()[-2000:])


def test_read_only_root_with_the_run_folder_on_tmpfs_serves_jobs(image):
    volume = tempfile.mkdtemp(prefix="volume-")
    options = ["--read-only", "--tmpfs", "/tmp", "-v", f"{volume}:/workspace"]
    try:
        with Container(image, {}, *options) as container:
            container.wait_http("/readyz")
            result = sealed_run(container, {"workflow": empty_image(12, 12, 0x0000FF)})
            assert decode_png(result["outputs"][0]).convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    finally:
        shutil.rmtree(volume, ignore_errors=True)


def test_an_unwritable_volume_stops_the_container_naming_path_user_and_fix(image):
    volume = tempfile.mkdtemp(prefix="volume-")
    os.chmod(volume, 0o755)  # root's, as RunPod mounts it
    try:
        with Container(
            image, {"DRY_RUN": "1"}, "--user", "1000:1000", "-v", f"{volume}:/workspace"
        ) as container:
            code = podman("wait", container.name, timeout=60).stdout.strip()
            logs = container.logs()
        assert code == "1", logs
        assert "cannot write the model root (COMFYUI_MODEL_DIR) /workspace/models as uid 1000" in logs
        assert "Run the container as root" in logs and "chown -R 1000 /workspace/models" in logs
    finally:
        shutil.rmtree(volume, ignore_errors=True)


PROGRAM_PID = (
    "import xmlrpc.client\n"
    "from supervisor.xmlrpc import SupervisorTransport\n"
    "t = SupervisorTransport(None, None, 'unix:///tmp/comfy-worker/supervisor.sock')\n"
    "print(xmlrpc.client.ServerProxy('http://x', transport=t).supervisor.getProcessInfo('comfy')['pid'])\n"
)
STATES = (
    "import os\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try:\n"
    "        print(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0])\n"
    "    except OSError:\n"
    "        pass\n"
)


def test_two_comfyui_instances_in_the_container_run_two_jobs_at_once(image):
    with Container(image, {"COMFY_INSTANCES": "2", "COMFY_PORT": str(free_port(2))}) as container:

        def instances():
            return requests.get(container.url + "/healthz", timeout=5).json()["comfy"]["instances"]

        container.wait_http("/readyz", timeout=300)  # one instance ready
        wait_until(lambda: all(i["ready"] for i in instances()), 300, "both ComfyUI instances ready")
        assert "ComfyUI instance 1 (comfy-1)" in container.logs()
        jobs = []
        for steps in (6, 7):
            request, ephemeral = seal_request({"workflow": slow_workflow(steps)}, container.public)
            started = requests.post(container.url + "/run", params={"async": "1"}, json=request, timeout=30)
            jobs.append((started.json()["id"], ephemeral))
        wait_until(
            lambda: [i["busy"] for i in instances()] == [True, True], 60, "both instances busy at once"
        )
        for job_id, ephemeral in jobs:
            seen = {}

            def ended(job_id=job_id, seen=seen):
                seen.update(requests.get(f"{container.url}/jobs/{job_id}", timeout=10).json())
                return seen["state"] in ("completed", "failed", "cancelled")

            wait_until(ended, 300, f"job {job_id}")
            assert open_answer(seen["result"], ephemeral, container.public)["status"] == "ok"
