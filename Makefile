# `make demo` and `make test` work from a fresh clone: each creates .venv if missing,
# installs the pinned torch pair, then the package with its test extras, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.radloop-installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PIN)
	$(BIN)/python -m pip install $(TORCH_PIN) -e ".[test]"
	# IU X-ray reports ship inside this wheel; its own dependencies are not needed.
	$(BIN)/python -m pip install $(TORCH_PIN) --no-deps torchxrayvision
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/radloop demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: install lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/synthcxr_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
