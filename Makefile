# Two commands a newcomer needs: `make up` (serve on embedded defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,dev

.PHONY: install up test lint format clean compose-check

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	touch $@

up: install
	$(BIN)/pneumoscan up

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Builds the images and runs docker-compose.yml for real (many minutes; not part of .ci/run):
# docs/deploy.md. Base images come from Debian's packages (deploy/local-images.sh) unless
# OFFICIAL_IMAGES=1, where a registry is reachable.
compose-check: install
	@if [ -z "$(OFFICIAL_IMAGES)" ]; then eval "$$(deploy/local-images.sh)"; fi; \
	$(BIN)/python deploy/compose_check.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
