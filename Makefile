# `make run` and `make test` work on a fresh machine with only Python 3.11, pip and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint types venv bench clean tools

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the first run also makes a local CA and certificate, so the http port serves https:// (tokens on chain need it)
run: $(STAMP)
	$(BIN)/overlay-node init --tls
	$(BIN)/overlay-node run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

# @bsv/sdk for the UHRP codec cross-check (tests/unit/test_uhrp.py); installed once
tools:
	test -d .tools/node_modules/@bsv/sdk || npm install --silent --no-audit --no-fund --prefix .tools @bsv/sdk@2.1.0

test: lint types tools
	$(BIN)/pytest -q

# every bench three times (BENCH_ROUNDS), each round's JSON kept in bench/results/runs/<round>/; then one table of
# every figure against its target with its run-to-run spread (bench/summary.py -> bench/results/summary.md)
BENCH_ROUNDS ?= 3
bench: $(STAMP)
	rm -rf bench/results/runs
	for round in $$(seq 1 $(BENCH_ROUNDS)); do \
		touch bench/results/.round; \
		for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done; \
		mkdir -p bench/results/runs/$$round; \
		find bench/results -maxdepth 1 -name 'bench_*.json' -newer bench/results/.round \
			-exec cp {} bench/results/runs/$$round/ \; ; \
	done
	rm -f bench/results/.round
	$(BIN)/python bench/summary.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
