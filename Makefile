# Every target installs what it needs first, so each works from a fresh clone on Debian.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: certify test lint install system-packages controlplane controlplane-if-go clean

# The main job: the certification suite against the sandbox; writes runs/<run id>/run.json.
certify: install
	$(BIN)/stormgate run $(ARGS)

# Lint, type-check, then the harness's own tests. The Kubernetes tests run where the control
# plane is built (see controlplane) and are skipped with the reason elsewhere.
test: install lint controlplane-if-go
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

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok for the Kubernetes
# tests, built once from the Go module proxy into a cache outside the repository.
controlplane:
	bash tests/kubernetes/controlplane/build.sh

controlplane-if-go:
	@if command -v go >/dev/null 2>&1 || test -x /usr/local/go/bin/go; then \
		bash tests/kubernetes/controlplane/build.sh; \
	else \
		echo "Go is not installed: the Kubernetes tests will be skipped (install Go, then run make controlplane)."; \
	fi

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
