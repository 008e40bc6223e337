# Two commands do everything on a fresh machine: `make verify` and `make test` (`make install` only installs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
TORCH := torch==2.13.0
# The zoo tests (torchvision and timm as their libraries build the models) run in a second venv:
# PyPI's torchvision has no build matching the light CPU torch above (issue 20).
ZOO_VENV := .venv-zoo
ZOO_BIN := $(ZOO_VENV)/bin
ZOO_STAMP := $(ZOO_VENV)/.stamp-install
ZOO_TORCH := $(if $(filter aarch64,$(shell uname -m)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)

.PHONY: install install-zoo verify test test-zoo lint typecheck data bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# create .venv and install advdim with its test tools, nothing else (no data, no run)
install: $(STAMP)

$(ZOO_STAMP): pyproject.toml
	test -x $(ZOO_BIN)/python || $(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_BIN)/python -m pip install -q --upgrade pip
	$(ZOO_BIN)/python -m pip install -q $(ZOO_TORCH)
	$(ZOO_BIN)/python -m pip install -q -e '.[test,zoo]'
	touch $(ZOO_STAMP)

# the second venv with torchvision and timm (about 5.5 GB), for the zoo tests and scripts/zoo_table.py
install-zoo: $(ZOO_STAMP)

data:
	@scripts/ensure-system.sh

verify: $(STAMP) data
	$(BIN)/advdim verify

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard advdim theory simulate empirical tests benchmarks scripts)

typecheck: $(STAMP)
	scripts/typecheck.sh

test: $(STAMP) $(ZOO_STAMP) data lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider --ignore=tests/zoo tests advdim theory simulate empirical
	$(ZOO_BIN)/python -m pytest -q -p no:cacheprovider tests/zoo

# the models of torchvision and timm, built by their libraries (issue 20)
test-zoo: $(ZOO_STAMP)
	$(ZOO_BIN)/python -m pytest -q -p no:cacheprovider tests/zoo

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(ZOO_VENV) build .mypy_cache .ruff_cache .pytest_cache .hypothesis
