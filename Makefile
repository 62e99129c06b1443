# Herald: `make run` installs and starts it with demo data on SQLite; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run install test test-fast lint bench bench-ingest bench-email bench-policy bench-channels clean

run: $(STAMP)  ## install, migrate the SQLite file, load demo data, serve on http://127.0.0.1:8000
	$(BIN)/herald migrate
	$(BIN)/herald demo
	$(BIN)/herald serve

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Herald needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP) lint  ## lint + type check + import layering + every test (PostgreSQL tests skip unless HERALD_TEST_DATABASE_URL is set)
	$(BIN)/pytest -n 2

test-fast: $(STAMP)
	$(BIN)/pytest -n 2 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: $(STAMP)  ## work-engine throughput on SQLite (and PostgreSQL if HERALD_BENCH_DATABASE_URL is set)
	$(BIN)/python bench/engine.py

bench-ingest: $(STAMP)  ## Segment-spec events/s beside a bare endpoint, and 1M-row CSV import (about 20 min; --quick: 1 min)
	$(BIN)/python bench/ingest.py

bench-email: $(STAMP)  ## email render + DKIM RSA-2048 + SMTP to postfix's smtp-sink, beside smtp-source (needs postfix; --quick: 1 min)
	$(BIN)/python bench/email_send.py

bench-policy: $(STAMP)  ## send-time policy decisions/s for a 100,000-recipient batch, SQLite (and PostgreSQL if HERALD_BENCH_DATABASE_URL is set)
	$(BIN)/python bench/policy.py

bench-channels: $(STAMP)  ## SMS, WhatsApp and push adapters to local peers beside a bare client, and inbox rows/s (about 10 min; --quick: 1 min)
	$(BIN)/python bench/channels.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
