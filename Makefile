# The two set-up commands of the README: `make run` and `make test`; each creates the
# local virtual environment .venv when it is missing and installs what it needs into it.
# `make lint` checks the code as CI does, before the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The project itself (editable, so a checkout's edits take effect).
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --editable .
	touch $@

# Test tools, and the first-party plugins installed the way a user installs them (not editable).
$(VENV)/.installed-test: $(VENV)/.installed-run plugins/imgxfer-timm/pyproject.toml $(wildcard plugins/imgxfer-timm/src/imgxfer_timm/*.py) plugins/imgxfer-diffusers/pyproject.toml $(wildcard plugins/imgxfer-diffusers/src/imgxfer_diffusers/*.py) plugins/imgxfer-transformers/pyproject.toml $(wildcard plugins/imgxfer-transformers/src/imgxfer_transformers/*.py)
	$(BIN)/pip install --quiet --editable '.[test]'
	$(BIN)/pip install --quiet './plugins/imgxfer-timm[lite0]'
	$(BIN)/pip install --quiet './plugins/imgxfer-diffusers[test]'
	$(BIN)/pip install --quiet './plugins/imgxfer-transformers[test]'
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/imgxfer run --generator gan

$(VENV)/.installed-lint: $(VENV)/.installed-run
	$(BIN)/pip install --quiet --editable '.[lint]'
	touch $@

# ruff (pyflakes, isort, pyupgrade, bugbear) over everything, mypy over the package
# (strict on the plugin API, the ground floor and the run layer: pyproject.toml).
lint: $(VENV)/.installed-lint
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
