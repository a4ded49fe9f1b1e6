# `make demo` and `make test` create .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) demo.py

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) benchmarks/bench_eval.py

.PHONY: venv demo test bench
