# `make demo` and `make test` work on a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The lower end of the supported range (transformers 5.2): its own venv, the same tests.
OLDEST := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed
COMMON_REQS := pyproject.toml requirements-base.txt requirements-data.txt requirements-kernels.txt

VERSIONS := "import sys, torch, transformers; print(sys.prefix, 'transformers', transformers.__version__, 'torch', torch.__version__)"

.PHONY: demo test test-oldest test-slow test-lmcache lint setup setup-oldest setup-lmcache clean

# $(1): the venv's folder, $(2): the requirements file that pins torch and the Hugging Face stack
define install_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/pip install --quiet --upgrade pip
	$(1)/bin/pip install --quiet -r $(2)
	$(1)/bin/pip install --quiet --no-deps -r requirements-data.txt
	$(1)/bin/pip install --quiet --no-deps -r requirements-kernels.txt
	$(1)/bin/pip install --quiet --no-deps -e .
	touch $(1)/.installed
endef

setup: $(STAMP)

$(STAMP): requirements.txt $(COMMON_REQS)
	$(call install_venv,$(VENV),requirements.txt)

setup-oldest: $(OLDEST_STAMP)

$(OLDEST_STAMP): requirements-oldest.txt $(COMMON_REQS)
	$(call install_venv,$(OLDEST),requirements-oldest.txt)

demo: $(STAMP)
	$(BIN)/kvstack run --model smollm2-135m --recipe "streaming:sink=4,window=384 > int8"

test: $(STAMP)
	$(BIN)/python -c $(VERSIONS)
	$(BIN)/ruff check kvstack training tests benchmarks
	$(BIN)/python -m pytest -q

# The whole suite again on the oldest supported transformers (lint needs no second run).
test-oldest: $(OLDEST_STAMP)
	$(OLDEST)/bin/python -c $(VERSIONS)
	$(OLDEST)/bin/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check kvstack training tests benchmarks

clean:
	rm -rf $(VENV) $(OLDEST) $(LMCACHE) .pytest_cache .ruff_cache

# NVIDIA kvpress, the peer `kvstack eval` compares against (kvpress:<Press> recipes), in its own
# venv: importing kvpress rewraps transformers' attention process-wide, so it never shares kvstack's.
PEERS := .venv-peers
.PHONY: peers
peers: $(PEERS)/.installed

$(PEERS)/.installed:
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet torch==2.13.0 transformers==5.2.0 kvpress==0.5.5 gguf==0.19.0 accelerate==1.15.0
	touch $@

# kvstack inside LMCache 0.5.6 (kvstack.integrations.lmcache): its own venv, since LMCache pins
# numpy<=2.2.6. The tests drive LMCache's storage manager (fs, resp against a private
# redis-server, the kvstack plugin adapter) and `lmcache server` through kvstack's launcher.
LMCACHE := .venv-lmcache
LMCACHE_STAMP := $(LMCACHE)/.installed
LMCACHE_TESTS := tests/integrations

setup-lmcache: $(LMCACHE_STAMP)

$(LMCACHE_STAMP): requirements-lmcache.txt requirements-data.txt pyproject.toml
	test -x $(LMCACHE)/bin/python || $(PYTHON) -m venv $(LMCACHE)
	$(LMCACHE)/bin/pip install --quiet --upgrade pip
	$(LMCACHE)/bin/pip install --quiet -r requirements-lmcache.txt
	$(LMCACHE)/bin/pip install --quiet --no-deps -r requirements-data.txt
	$(LMCACHE)/bin/pip install --quiet --no-deps -e .
	touch $@

test-lmcache: $(LMCACHE_STAMP)
	$(LMCACHE)/bin/python -c "import lmcache, numpy, torch; print('lmcache', lmcache.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
	$(LMCACHE)/bin/python -m pytest -q -W ignore::FutureWarning -W ignore::DeprecationWarning $(LMCACHE_TESTS)
