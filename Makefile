# The two commands of the README. Both install what they need into .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint install install-test chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# Run the gateway on the embedded default (in-process broker and store), in
# sandbox mode with sample data; prints what to try.
run: install
	CER_MODE=$${CER_MODE:-sandbox} SAMPLE_DATA=$${SAMPLE_DATA:-true} $(BIN)/cer-gateway serve

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy

# Debian's Chromium for the browser tests (tests/e2e/browser, Playwright drives it;
# Playwright's own browser downloads are not used). Installed once, quietly.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# The whole suite: lint, types, unit, contract (embedded + emulator + real
# RabbitMQ; real MongoDB when MONGODB_URL is set), end-to-end and browser tests.
test: install-test chromium lint
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)
