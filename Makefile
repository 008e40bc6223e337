# Two commands do everything on a fresh machine: `make verify` and `make test` (`make install` only installs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
TORCH := torch==2.13.0

.PHONY: install verify test lint typecheck data bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# create .venv and install advdim with its test tools, nothing else (no data, no run)
install: $(STAMP)

data:
	@scripts/ensure-system.sh

verify: $(STAMP) data
	$(BIN)/advdim verify

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard advdim theory simulate empirical tests benchmarks scripts)

typecheck: $(STAMP)
	scripts/typecheck.sh

test: $(STAMP) data lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider tests advdim theory simulate empirical

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache .hypothesis
