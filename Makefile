# Every target installs what it needs first, so each works from a fresh clone on Debian.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: certify test lint install system-packages controlplane clean

# The main job: the certification suite against the sandbox; writes runs/<run id>/run.json.
certify: install
	$(BIN)/stormgate run $(ARGS)

# Lint, type-check, then the harness's own tests.
test: install lint
	$(BIN)/pytest tests $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

install: system-packages $(STAMP)

system-packages:
	@sandbox/install-system-packages.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
