# syntax=docker/dockerfile:1.7
# The supervised ComfyUI worker: pod API or RunPod serverless worker (LAUNCH_MODE).
# Build: docker build -t comfy-worker .   Deploy: docs/deploy.md   Test: make image-test
#
# The base needs python3 (3.11) with venv on Debian or Ubuntu. The default is Python's slim
# Debian image: ComfyUI's torch comes from comfyui-requirements.lock and its wheels carry their
# CUDA libraries, so a CUDA base would add gigabytes nothing uses (one still works:
# BASE_IMAGE=<a CUDA image with python3.11>; `make image-test` builds on a local Debian base).
# TORCH_FLAVOR=cu128 builds the flavor for NVIDIA drivers 525-579: ComfyUI's torch for CUDA 12.8,
# from comfyui-requirements-cu128.lock (tag it -cu128); the default's torch needs driver >= 580.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- the worker's own virtual environment, from the pinned requirements ----------------------
FROM ${BASE_IMAGE} AS worker-venv
COPY requirements.txt requirements.lock /tmp/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/requirements.lock

# --- the image ---------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# ComfyUI at a pinned commit (a hash, never a branch); COMFYUI_REF in services/core/config.py matches.
ARG COMFYUI_REF=a125cd84b054a57729b5eecab930ca9408719832
# ComfyUI's source: GitHub's tarball of the commit (it names the commit in its header), or a
# tarball put into docker/comfyui-source/ of the build context (for builds without upstream).
ARG COMFYUI_SOURCE=https://github.com/Comfy-Org/ComfyUI/archive/${COMFYUI_REF}.tar.gz
# Optional: custom nodes ("<github repo url> <commit>" per line) and models to bake in (a JSON
# list of /download items, fetched and verified by the worker's own downloader).
ARG CUSTOM_NODES=docker/custom_nodes.txt
ARG MODELS_MANIFEST=docker/models.json
ARG TORCH_FLAVOR=

# What ComfyUI and common custom nodes need at run time that a slim base lacks (docs/deploy.md):
# git (custom nodes and their installs), libgl1 and libglib2.0-0 (OpenCV, which many custom
# nodes import). ComfyUI's own video nodes use PyAV, whose wheel carries FFmpeg; add the ffmpeg
# program for nodes that call it with EXTRA_APT_PACKAGES=ffmpeg. Debian's versions follow the
# base's point release, so they are not pinned here.
ARG EXTRA_APT_PACKAGES=
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git libgl1 libglib2.0-0 ${EXTRA_APT_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*

# ComfyUI's own user: it must not share one with the processes that hold the worker's secrets
RUN useradd --system --create-home --home-dir /home/comfy --shell /usr/sbin/nologin comfy

# ComfyUI and its own environment, by the same installer as `make run`, from the same lock
WORKDIR /app
COPY services/__init__.py services/
COPY services/comfy/__init__.py services/comfy/install.py services/comfy/custom_nodes.py services/comfy/
COPY comfyui-requirements*.lock ./
COPY docker/comfyui-source/ docker/comfyui-source/
RUN PIP_NO_CACHE_DIR=1 python3 services/comfy/install.py install --source "${COMFYUI_SOURCE}" \
      --ref "${COMFYUI_REF}" --comfyui-dir /opt/ComfyUI --venv /opt/comfyui-venv \
      --lock "comfyui-requirements${TORCH_FLAVOR:+-${TORCH_FLAVOR}}.lock"

COPY --from=worker-venv /opt/venv /opt/venv
COPY ${CUSTOM_NODES} docker/custom_nodes.txt
RUN PIP_NO_CACHE_DIR=1 /opt/venv/bin/python -m services.comfy.custom_nodes docker/custom_nodes.txt \
      /opt/ComfyUI /opt/comfyui-venv/bin/python

# the project itself last: a change of its code rebuilds from here, in seconds
COPY services/ services/
COPY conf/ conf/
COPY client/ client/
COPY docker/ docker/
COPY templates/ templates/
COPY requirements.txt requirements.lock pyproject.toml README.md ./

ENV LAUNCH_MODE=serverless \
    API_PORT=8000 \
    COMFYUI_MODEL_DIR=/workspace/models \
    COMFYUI_BAKED_MODEL_DIR=/opt/models \
    COMFYUI_DIR=/opt/ComfyUI \
    COMFY_PYTHON=/opt/comfyui-venv/bin/python \
    COMFY_PORT=8188 \
    COMFY_USER_REQUIRED=1 \
    CUDA_DRIVER_REQUIRED=1 \
    ENCRYPTION_REQUIRED=1 \
    DRY_RUN=0 \
    NO_HISTORY=0 \
    LOG_SILENT=0 \
    JOB_TIMEOUT_S=600 \
    RUN_DIR=/tmp/comfy-worker \
    MAX_RESULT_MB=15 \
    TEMPLATES_DIR=/workspace/templates:/app/templates \
    PYTHONUNBUFFERED=1

# baked models live in the image under /opt/models, so a volume mounted at /workspace cannot
# hide them; ComfyUI reads both folders
RUN mkdir -p /opt/models \
 && ENCRYPTION_REQUIRED=0 COMFYUI_MODEL_DIR=/opt/models /opt/venv/bin/python -m services.container.bake_models "${MODELS_MANIFEST}"

EXPOSE 8000
# Runs as root: supervisord then runs ComfyUI as `comfy` and can write root-owned volumes. The
# entrypoint is PID 1: it passes signals on and reaps orphans.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["/opt/venv/bin/python", "-m", "services.container.healthcheck"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "services.container.entrypoint"]
