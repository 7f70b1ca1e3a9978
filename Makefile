# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/sim.toml
# Debian packages of the real peers the tests talk to (broker, rotator daemon, INDI server,
# the browser and its driver for the web view, systemd-analyze for the unit's checks).
TEST_DEBS := mosquitto mosquitto-clients libhamlib-utils indi-bin chromium chromium-driver systemd
TEST_TOOLS := mosquitto mosquitto_sub rotctld indiserver indi_simulator_telescope chromium chromedriver systemd-analyze

.PHONY: run test lint venv venv-dev system-deps bench clean relay-demo

# The stamp files make both targets idempotent: a second run reuses .venv.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
venv-dev: $(VENV)/.installed-dev

run: venv
	$(BIN)/qkd-station run --config $(CONFIG)

# The seeds' experiment in simulation: Beijing and Stellenbosch share a key through the
# (trusted) satellite and move a one-time-padded image between their ETSI 014 KMEs.
relay-demo: venv
	$(BIN)/qkd-station relay-demo

system-deps:
	@bash .ci/system-deps $(TEST_DEBS) -- $(TEST_TOOLS)

# Two workers: much of the suite waits on real peers and subprocesses, so two halve the
# wall time on two cores; a file's tests stay on one worker (--dist loadfile) because they
# share module fixtures. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
test: venv-dev system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: venv-dev
	$(BIN)/ruff check .

bench: venv-dev
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
