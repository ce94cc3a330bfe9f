# Two entry points for people: `make serve` and `make test`. Both install what they need
# into .venv first (the first build of llama-cpp-python compiles llama.cpp: ~10 minutes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extras each target needs; pip only re-runs when pyproject.toml changes.
SERVE_EXTRAS := web,discord,telegram
TEST_EXTRAS  := dev,web,discord,telegram,eval,train
ARGS ?=

export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: serve chat test quick lint install-serve install-test install-browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[$(SERVE_EXTRAS)]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	# torch first, pinned: the CPU wheel (otherwise the train extra pulls a multi-GB CUDA build)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[$(TEST_EXTRAS)]'
	touch $@

install-serve: $(VENV)/.serve-installed
install-test: $(VENV)/.test-installed install-browser

# The browser test drives Debian's Chromium (never Playwright's own download). CI runs as root
# on Debian, so it installs it; elsewhere the test skips and says how to install it.
install-browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else \
	    echo "warning: no chromium: the browser test will skip (apt-get install chromium chromium-driver)"; \
	  fi; }

## serve: the web chat (plus Discord/Telegram when their tokens are set) on the bundled model
serve: install-serve
	$(BIN)/finechat serve $(ARGS)

## chat: talk to the model in this terminal
chat: install-serve
	$(BIN)/finechat chat $(ARGS)

lint: install-test
	$(BIN)/ruff check core bots web training tests
	$(BIN)/ruff format --check core bots web training tests
	$(BIN)/mypy

## test: lint, types and the whole test suite (what CI runs)
test: lint
	$(BIN)/python -m pytest $(ARGS)

## quick: the fast subset while you work (no slow end-to-end tests)
quick: install-test
	$(BIN)/python -m pytest -m "not slow" $(ARGS)
