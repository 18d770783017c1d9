# Set-up and everyday commands. Every target creates (or reuses) the virtual
# environment .venv and installs torch 2.14.1 / torchvision 0.29.1 and pdnet
# (editable, compiled against that torch) into it.

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

demo: venv
	$(VENV)/bin/pdnet demo

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q --runslow

clean:
	rm -rf build *.egg-info .pytest_cache
