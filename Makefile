# Set-up and everyday commands. Every target creates (or reuses) the virtual
# environment .venv and installs torch 2.14.1 / torchvision 0.29.1 and pdnet
# (editable, compiled against that torch) into it.
#
# The extension compiles once per change: its objects stay in build/ (setup.py), so
# after an edit of csrc/ `make venv` recompiles only what changed; MAX_JOBS=N caps the
# parallel compile jobs (default: the CPU cores). `make demo DEMO_ARGS="--minutes 10"`
# gives the demo more time (default: 4.5 minutes in all, see `pdnet demo --help`).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.pdnet-installed
TORCH  := torch==2.14.1 torchvision==0.29.1
# sources whose change requires re-installing (extension rebuild, new entry points)
INSTALL_DEPS := setup.py $(wildcard pyproject.toml CMakeLists.txt csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*/*.cpp csrc/*/*/*.h csrc/*/*/*.cu csrc/*/*/*.cuh)

.PHONY: venv demo test test-all clean

venv: $(STAMP)

$(STAMP): $(INSTALL_DEPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q "setuptools>=70" wheel ninja
	$(PIP) install -q --no-build-isolation -e ".[test,data,train]"
	touch $(STAMP)

DEMO_ARGS ?=

demo: venv
	$(VENV)/bin/pdnet demo $(DEMO_ARGS)

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q --runslow

clean:
	rm -rf build *.egg-info .pytest_cache
