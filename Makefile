# Two entry points for a fresh machine (see README.md):
#   make demo   set up .venv and run the transcription job on embedded defaults
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup

setup: $(VENV)/.installed

# torch is pinned to the CPU build here (an unpinned torch pulls a multi-GB CUDA build); pyproject.toml keeps a
# range so GPU machines can bring their own build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 -c cluster/requirements.txt
	$(BIN)/pip install --quiet -c cluster/requirements.txt -e ".[test]"
	touch $@

demo: setup
	$(BIN)/gpa-batch demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check gpa jobs tests benchmarks cluster
