# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DeepSpeed JIT-compiles small ops on first use; keep them with the environment.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions
# xformers (a CUDA attention backend) only where CUDA exists: CPU machines never download it.
EXTRAS ?= dev$(shell command -v nvidia-smi >/dev/null 2>&1 && echo ,xformers)
PYTEST_ARGS ?=
# The suite runs on two workers (pytest-xdist), a file per worker at a time: many end-to-end tests wait on
# process start-up, signals and schedulers, and the other worker uses that time.
TEST_WORKERS ?= 2
DEMO_ARGS ?=

.PHONY: venv test lint demo clean-venv

venv: $(STAMP)

# Created when missing; brought up to date whenever the package metadata or the pinned versions change.
$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg pyproject.toml constraints.txt
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[$(EXTRAS)]'
	$(PY) -m pip check
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# pyflakes and pycodestyle's error classes (pyproject.toml [tool.ruff]); no style rules.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Builds the demo corpus, pretrains the tiny model through the deepspeed launcher, evaluates it.
demo: $(STAMP)
	$(PY) -m onepeace.demo $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
