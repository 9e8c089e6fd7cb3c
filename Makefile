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

# 7 daemons and a devnet ledger worked for MINUTES while a seeded loop kills and restarts nodes (SEED= repeats a run),
# then invariants checked from both sides' records; the table goes to bench/results/soak.json (tests/soak/, not
# collected by `make test`)
MINUTES ?= 5
SEED ?=
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python -m tests.soak --minutes $(MINUTES) $(if $(SEED),--seed $(SEED))

# every parsing surface fuzzed for FUZZ_SECONDS each: the hypothesis properties of tests/fuzz/ (not collected by
# `make test`), the atheris entries where atheris is installed, and one in-process node attacked on its sockets;
# inputs, crashes, RSS and open files printed and saved to bench/results/fuzz.json
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/pytest -m fuzz -s -q -o faulthandler_timeout=0 tests/fuzz
	if $(BIN)/python -c 'import atheris' 2>/dev/null; then \
		for surface in frames http; do \
			$(BIN)/python -m tests.fuzz.atheris_entry $$surface $(FUZZ_SECONDS) || exit 1; \
		done; \
	else echo "fuzz: atheris is not installed in $(VENV): hypothesis alone"; fi

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
