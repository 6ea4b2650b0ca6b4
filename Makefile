# Two commands for a fresh machine: `make run` (the worker) and `make test` (the tests).
# Both create .venv from the pinned requirements when it is missing or out of date.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-real image image-test comfyui comfyui-lock smoke lint bench dist keygen venv clean

$(STAMP): requirements.txt requirements-dev.txt requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c requirements.lock
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m services.container.entrypoint --env-file .env.local

test: lint
	$(PY) -m pytest -n 4 --dist loadfile

# The real-ComfyUI tier: COMFYUI_DIR + COMFY_PYTHON when set, else .comfyui/ (make comfyui).
test-real: $(STAMP)
	@$(PY) -c "from tests.stack import real_backend; real_backend()" || exit 1
	$(PY) -m pytest -m real

# The image: docker when an engine answers, else podman (docker format keeps the HEALTHCHECK).
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
IMAGE  ?= comfy-worker:dev
image:
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker) -t $(IMAGE) $(BUILD_ARGS) .

# The image tier: builds with podman on a local Debian base and runs every check (not in CI).
image-test: $(STAMP)
	$(PY) -m pytest -m image -v -s tests/image

# ComfyUI at COMFYUI_REF into .comfyui/ with its locked environment (what `make run` does first).
# TORCH_FLAVOR=cu128: torch built for CUDA 12.8 (NVIDIA driver >= 525) instead of the default's
# CUDA 13.0 (driver >= 580), from its own lock, into .comfyui/venv-cu128.
COMFYUI_REF    ?= a125cd84b054a57729b5eecab930ca9408719832
COMFYUI_SOURCE ?= https://github.com/Comfy-Org/ComfyUI.git
TORCH_FLAVOR   ?=
COMFY_LOCK     := comfyui-requirements$(if $(TORCH_FLAVOR),-$(TORCH_FLAVOR)).lock
comfyui:
	$(PYTHON) services/comfy/install.py install --source "$(COMFYUI_SOURCE)" --ref "$(COMFYUI_REF)" \
	    --comfyui-dir .comfyui/ComfyUI --venv .comfyui/venv$(if $(TORCH_FLAVOR),-$(TORCH_FLAVOR)) --lock $(COMFY_LOCK)

# When COMFYUI_REF moves: resolve ComfyUI's requirements at the new commit into the lock (each
# flavor: the newest torch/torchvision pair PyPI builds for its CUDA).
TORCH_PINS_ := --pin torch==2.14.1 --pin torchvision==0.29.1
TORCH_PINS_cu128 := --pin torch==2.10.0 --pin torchvision==0.25.0
COMFY_TORCH ?= $(TORCH_PINS_$(TORCH_FLAVOR)) --skip torchaudio
comfyui-lock:
	$(PYTHON) services/comfy/install.py lock --source "$(COMFYUI_SOURCE)" --ref "$(COMFYUI_REF)" \
	    --lock $(COMFY_LOCK) $(COMFY_TORCH)

smoke: $(STAMP)
	$(PY) -m tests.smoke

# ruff (style, complexity) and the layering contracts of services/ (pyproject.toml, import-linter)
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m bench.run_dry_run
	$(PY) -m bench.run_workflow
	$(PY) -m bench.download
	$(PY) -m bench.recovery
	$(PY) -m bench.hub
	$(PY) -m bench.health
	$(PY) -m bench.health --instances 2
	$(PY) -m bench.pool
	$(PY) -m bench.throughput
	$(PY) -m bench.shared_jobs
	$(PY) -m bench.soak
	$(PY) -m bench.rolling_restart
	$(PY) -m bench.webhooks
	$(PY) -m bench.envelope_keys
	$(PY) -m bench.templates
	$(PY) -m bench.job_models
	$(PY) -m bench.cold_start
	$(PY) -m bench.big_payload
	$(PY) -m bench.footprint
	$(PY) -m bench.hostile_bodies
	$(PY) -m bench.telemetry
	$(PY) -m bench.access
	$(PY) -m bench.fleet_turns
	$(PY) -m bench.gpu_faults

# The client as a wheel (dist/comfy_worker-*.whl): `pip install` it anywhere for the `comfy-worker` command.
dist: $(STAMP)
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps -w dist .

keygen: $(STAMP)  # an API key: make keygen NAME=ci SCOPES=jobs,models
	$(PY) -m services.container.keygen $(if $(NAME),--api-key $(NAME) --scopes $(or $(SCOPES),jobs))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist client.egg-info comfy_worker.egg-info
