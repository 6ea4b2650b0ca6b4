# Two commands for a fresh machine: `make run` (the worker) and `make test` (the tests).
# Both create .venv from the pinned requirements when it is missing or out of date.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test smoke lint bench keygen venv clean

$(STAMP): requirements.txt requirements-dev.txt requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c requirements.lock
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m services.entrypoint --env-file .env.local

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

smoke: $(STAMP)
	$(PY) -m tests.smoke

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) -m bench.run_dry_run
	$(PY) -m bench.run_workflow
	$(PY) -m bench.download
	$(PY) -m bench.recovery
	$(PY) -m bench.hub

keygen: $(STAMP)
	$(PY) -m services.keygen

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
