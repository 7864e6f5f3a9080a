# Two commands on a fresh machine: `make dataset` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/m-beir-cot
MBEIR_ROOT ?=
STAMP := $(VENV)/.installed

.PHONY: dataset test lint setup clean

setup: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

dataset: $(STAMP)
	$(BIN)/python -m pipeline.make_dataset --output_dir $(OUT) $(if $(MBEIR_ROOT),--mbeir_root $(MBEIR_ROOT),)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf out build dist *.egg-info
