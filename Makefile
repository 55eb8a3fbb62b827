# The two set-up commands of the README: `make run` and `make test`; each creates the
# local virtual environment .venv when it is missing and installs what it needs into it.
# `make lint` checks the code as CI does, before the tests. `make wheels` builds the
# distributions, `make check-wheels` installs them in a fresh environment (docs/releasing.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DIST ?= dist
PLUGINS := plugins/imgxfer-timm plugins/imgxfer-diffusers plugins/imgxfer-transformers

.PHONY: run test lint clean-venv wheels check-wheels docs

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

$(VENV)/.installed-docs: $(VENV)/.installed-run
	$(BIN)/pip install --quiet --editable '.[docs]'
	touch $@

# The documentation site (mkdocs.yml) into site/. Strict, as in CI: a broken link or
# anchor, a missing API object or a command missing from the CLI reference fails it.
# (NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2, which the docs extra excludes.)
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

$(VENV)/.installed-release: $(VENV)/.installed-run
	$(BIN)/pip install --quiet --editable '.[release]'
	touch $@

# An sdist and a wheel of imgxfer and of each plugin, into $(DIST); their earlier builds
# there are removed first, so the folder holds one version of each.
wheels: $(VENV)/.installed-release
	rm -f $(DIST)/imgxfer-* $(DIST)/imgxfer_*
	$(BIN)/python -m build --outdir $(DIST) .
	for p in $(PLUGINS); do $(BIN)/python -m build --outdir $(DIST) $$p || exit 1; done

# Those wheels installed (not editable) into a new virtual environment and used there.
check-wheels: wheels
	$(BIN)/python tests/wheels/check_wheels.py $(DIST)

clean-venv:
	rm -rf $(VENV)
