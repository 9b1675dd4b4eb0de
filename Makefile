# Two commands on a fresh machine with only python3.11 and make: `make demo` and `make test`.
PYTHON ?= python3.11
BOOT := .uv-bootstrap
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(BOOT)/bin/uv)
SCALE ?= quick
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never

.PHONY: demo test test-slow lint format sync bench bench-env readme clean

$(BOOT)/bin/uv:
	$(PYTHON) -m venv $(BOOT)
	$(BOOT)/bin/pip install --quiet "uv==$(UV_VERSION)"

sync: $(if $(findstring $(BOOT),$(UV)),$(BOOT)/bin/uv)
	$(UV) sync --locked

# Ends by refreshing README.md's results table from the REPORT.md just written; REPORT.md is
# written when an experiment fails too (exit 1), so the table is refreshed then as well, and the
# exit status stays the reproduce's.
demo: sync
	@status=0; $(UV) run --locked --no-sync python -m experiments reproduce --scale $(SCALE) \
	  --force || status=$$?; \
	if [ $$status -le 1 ]; then $(UV) run --locked --no-sync python -m experiments.readme || \
	  status=$$?; fi; exit $$status

# Copy the claims tables of results/REPORT.md into README.md's results section.
readme: sync
	$(UV) run --locked --no-sync python -m experiments.readme

test: sync
	$(UV) run --locked --no-sync ruff check .
	$(UV) run --locked --no-sync ruff format --check .
	$(UV) run --locked --no-sync pytest -n 2

test-slow: sync
	$(UV) run --locked --no-sync pytest -n 2 -m slow

lint: sync
	$(UV) run --locked --no-sync ruff check --fix .
	$(UV) run --locked --no-sync ruff format .

# Peer environments that conflict with our locked JAX (see DESIGN.md, "Benchmarks contract").
bench-env: sync
	bash benchmarks/make_envs.sh

# Every benchmarks/*.py script (not the `_` helper modules) with --quick (peers of the `bench`
# group in-process, the others through .bench-envs); each refreshes its section of
# benchmarks/RESULTS.md and writes results/bench/*.json. A missing peer stops it (exit 3).
bench: bench-env
	@set -e; for b in benchmarks/[!_]*.py; do \
	  name=$$(basename $$b .py); echo "== $$name"; \
	  $(UV) run --locked --group bench python $$b --quick --json results/bench/$$name.json; \
	done

clean:
	rm -rf $(BOOT) .venv .bench-envs results
