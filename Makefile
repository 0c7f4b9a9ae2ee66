# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv on first use and installs the project into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-web bench-retention lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing paper-digest and its dependencies into $(VENV) (first run only)..."
	@$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,deploy]'
	@touch $(STAMP)

## Run today's digests on the embedded default (SQLite, bundled papers, file outbox).
demo: $(STAMP)
	@$(BIN)/digest demo

## Run the whole test suite against the real services on this machine.
test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

## Print throughput figures (not part of `make test`).
BENCH_ARGS ?= --subscribers 10000 --papers 2000 --workers 2
bench: $(STAMP)
	@$(BIN)/digest bench $(BENCH_ARGS)

## Load-test the web app: gunicorn as deployed, 200 locust clients (bench/web/run.py).
BENCH_WEB_ARGS ?= --users 200 --run-time 60s
bench-web: $(STAMP)
	@$(BIN)/locust --version >/dev/null 2>&1 || \
		$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,deploy,bench]'
	@$(BIN)/python -m bench.web $(BENCH_WEB_ARGS)

## Database size and the day's time after 1, 30 and 365 simulated days, with and without
## `digest prune` (bench/retention.py). 4,000 subscribers keep it near 15 minutes on two
## cores; BENCH_RETENTION_ARGS='--subscribers 10000' measures the issue's full size.
BENCH_RETENTION_ARGS ?= --subscribers 4000 --days 1,30,365
bench-retention: $(STAMP)
	@$(BIN)/python -m bench.retention $(BENCH_RETENTION_ARGS)

## ruff and mypy, pinned so that a new release cannot fail CI overnight (.pre-commit-config.yaml runs the same).
lint: $(STAMP)
	@$(BIN)/pip install --quiet --disable-pip-version-check 'ruff==0.17.6' 'mypy==2.4.1'
	@$(BIN)/ruff check digest workers tests bench
	@$(BIN)/mypy digest workers

clean:
	rm -rf $(VENV) data .pytest_cache
