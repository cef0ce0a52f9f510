# Two set-up commands (README): `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $(STAMP)

.PHONY: venv demo test bench
venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/polarxr demo --workdir demo-run

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

# The quick benchmarks; README lists the longer ones (full-size inference, training, GPU).
bench: $(STAMP)
	$(VENV)/bin/python benchmarks/labels_bench.py
	$(VENV)/bin/python benchmarks/cube_bench.py
	$(VENV)/bin/python benchmarks/scaling.py
