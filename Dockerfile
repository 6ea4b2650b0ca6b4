# syntax=docker/dockerfile:1.7
# The supervised ComfyUI worker: pod API or RunPod serverless worker (LAUNCH_MODE).
# Build: docker build -t comfy-worker .   Deploy: docs/deploy.md
#
# The base is PyTorch's CUDA runtime image: Python 3.11 with a torch, torchvision and
# torchaudio built for its CUDA, which ComfyUI uses as they are.
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

# --- the worker's own virtual environment, from the pinned requirements ----------------------
FROM ${BASE_IMAGE} AS worker-venv
COPY requirements.txt requirements.lock /tmp/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/requirements.lock

# --- the image ---------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# ComfyUI at a pinned commit (a hash, never a branch); COMFYUI_REF in services/config.py matches.
ARG COMFYUI_REF=a125cd84b054a57729b5eecab930ca9408719832
# Optional: custom nodes ("<github repo url> <commit>" per line) and models to bake in (a JSON
# list of /download items, fetched and verified by the worker's own downloader).
ARG CUSTOM_NODES=docker/custom_nodes.txt
ARG MODELS_MANIFEST=docker/models.json
# root where the platform's volume needs it (RunPod mounts root-owned volumes); see docs/deploy.md
ARG RUN_AS=worker

# ComfyUI's source: GitHub's tarball of the commit (it names the commit in its header), or a
# tarball or git repository at a path inside the build context.
ARG COMFYUI_SOURCE=https://github.com/Comfy-Org/ComfyUI/archive/${COMFYUI_REF}.tar.gz

# ComfyUI and its own environment, by the same installer as `make run`, from the same lock
WORKDIR /app
COPY services/comfy/install.py services/comfy/install.py
COPY comfyui-requirements.lock ./
RUN PIP_NO_CACHE_DIR=1 python services/comfy/install.py install --source "${COMFYUI_SOURCE}" \
      --ref "${COMFYUI_REF}" --comfyui-dir /opt/ComfyUI --venv /opt/comfyui-venv

COPY --from=worker-venv /opt/venv /opt/venv
COPY services/ services/
COPY conf/ conf/
COPY client/ client/
COPY docker/ docker/
COPY requirements.txt requirements.lock pyproject.toml README.md ./

RUN /opt/venv/bin/python -m services.comfy.custom_nodes "${CUSTOM_NODES}" /opt/ComfyUI /opt/comfyui-venv/bin/python

ENV LAUNCH_MODE=serverless \
    API_PORT=8000 \
    COMFYUI_MODEL_DIR=/workspace/models \
    COMFYUI_DIR=/opt/ComfyUI \
    COMFY_PYTHON=/opt/comfyui-venv/bin/python \
    COMFY_PORT=8188 \
    ENCRYPTION_REQUIRED=1 \
    DRY_RUN=0 \
    NO_HISTORY=0 \
    LOG_SILENT=0 \
    JOB_TIMEOUT_S=600 \
    RUN_DIR=/tmp/comfy-worker \
    MAX_RESULT_MB=15 \
    PYTHONUNBUFFERED=1

RUN ENCRYPTION_REQUIRED=0 /opt/venv/bin/python -m services.bake_models "${MODELS_MANIFEST}" \
 && (id -u worker >/dev/null 2>&1 || useradd --create-home --uid 1000 worker) \
 && mkdir -p /workspace/models /tmp/comfy-worker \
 && chown -R worker:worker /workspace /tmp/comfy-worker /opt/ComfyUI

VOLUME ["/workspace"]
EXPOSE 8000
USER ${RUN_AS}
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["/opt/venv/bin/python", "-m", "services.healthcheck"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "services.entrypoint"]
