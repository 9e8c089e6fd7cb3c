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

# 7 daemons, each in a network namespace of its own, split 4/3 for 30 s and healed; the seconds each property takes
# to converge after the heal printed and saved to bench/results/partition.json (tests/partition/, needs root and
# iproute2; also collected by `make test`, where it skips without them)
.PHONY: partition
partition: $(STAMP)
	$(BIN)/pytest -q -s tests/partition

# every decoder surface fuzzed in-process by a seeded mutation fuzzer (tests/fuzz/fast.py), INPUTS inputs each
# (`make fuzz INPUTS=1000000`: a million), then one subprocess node attacked on its http, control, swarm and DHT
# ports while `ctl status` is timed every 0.5 s (tests/fuzz/live.py); one table (inputs, refused, crashes, inputs/s,
# RSS before/after, slowest status) printed and saved to bench/results/fuzz.json, a crash's input to
# bench/results/fuzz-crashes/ (SEED= repeats a run). Then the coverage-guided atheris entries for FUZZ_SECONDS each
# where atheris is installed. `make fuzz-properties`: the hypothesis properties of tests/fuzz/, FUZZ_SECONDS each
# (not collected by `make test`), saved to bench/results/fuzz-properties.json.
INPUTS ?= 100000
FUZZ_JOBS ?= 2
FUZZ_SECONDS ?= 60
.PHONY: fuzz fuzz-properties
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz.fast --inputs $(INPUTS) --jobs $(FUZZ_JOBS) $(if $(SEED),--seed $(SEED))
	if $(BIN)/python -c 'import atheris' 2>/dev/null; then \
		for surface in frames http dht json chain; do \
			$(BIN)/python -m tests.fuzz.atheris_entry $$surface $(FUZZ_SECONDS) || exit 1; \
		done; \
	else echo "fuzz: atheris is not installed in $(VENV): no coverage-guided runs"; fi

fuzz-properties: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/pytest -m fuzz -s -q -o faulthandler_timeout=0 tests/fuzz

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
