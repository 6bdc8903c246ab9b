# The two promises: `make demo` and `make test` work on a fresh CPU machine with Python 3.11.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
# The environment is rebuilt only when its inputs change.
ENV_HASH := $(shell cat pyproject.toml constraints/cpu.txt | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(ENV_HASH)
PYTEST_ARGS ?=
# pip's configured extra indexes print a warning per package; keep the log readable.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: env demo test clean-env

env: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	@echo "creating $(VENV) (torch CPU build pinned by constraints/cpu.txt)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(VENV)/bin/pip install -q -c constraints/cpu.txt -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(VENV)/bin/python -c "import torch, ray, deepspeed, transformers; print('env ok: torch', torch.__version__, 'ray', ray.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"
	touch $@

demo: env
	$(VENV)/bin/tandem run recipes/quickstart.yaml

# Tests run in a loopback-only network namespace where the machine allows it (proves the
# suite needs no network); otherwise on the host network, with Ray bound to 127.0.0.1.
test: env
	@if unshare -n true 2>/dev/null; then \
	  echo "running the tests in a loopback-only network namespace"; \
	  unshare -n bash -c 'ip link set lo up && exec $(VENV)/bin/python -m pytest $(PYTEST_ARGS)'; \
	else \
	  echo "no network namespace here (needs root or user namespaces): tests run on the host network, Ray on 127.0.0.1"; \
	  $(VENV)/bin/python -m pytest $(PYTEST_ARGS); \
	fi

clean-env:
	rm -rf $(VENV)
