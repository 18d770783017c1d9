# Set-up and everyday commands. Every target creates (or reuses) the virtual
# environment .venv and installs torch 2.14.1 / torchvision 0.29.1 and pdnet
# (editable, compiled against that torch, with its test, data, train, lint and deploy extras)
# into it.
#
# The extension compiles once per change: its objects stay in build/ (setup.py), so
# after an edit of csrc/ `make venv` recompiles only what changed; MAX_JOBS=N caps the
# parallel compile jobs (default: the CPU cores). `make demo DEMO_ARGS="--minutes 10"`
# gives the demo more time (see `pdnet demo --help`).
#
# make venv      set up .venv (also done by every other target)
# make demo      the main job on synthetic data (pdnet demo)
# make test      the default test suite; make test-all adds the tests marked slow
# make lint      ruff (pyproject.toml) over the Python files, clang-format over csrc/

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.pdnet-installed
TORCH  := torch==2.14.1 torchvision==0.29.1
# the C++/CUDA sources, checked by clang-format
CSRC   := $(sort $(shell find csrc -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \)))
# sources whose change requires re-installing (extension rebuild, new entry points, extras)
INSTALL_DEPS := setup.py $(wildcard pyproject.toml CMakeLists.txt) $(CSRC)

.PHONY: venv demo test test-all lint clean

venv: $(STAMP)

$(STAMP): $(INSTALL_DEPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q "setuptools>=70" wheel ninja
	$(PIP) install -q --no-build-isolation -e ".[test,data,train,lint,deploy]"
	touch $(STAMP)

DEMO_ARGS ?=

demo: venv
	$(VENV)/bin/pdnet demo $(DEMO_ARGS)

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q --runslow

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC)

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
