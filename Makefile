# The two commands a newcomer needs: `make run` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
FLNODE := $(VENV)/bin/flnode
RUN_DIR ?= .run/node0

.PHONY: run test test-all lint bench-storage bench-chain contracts venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

# Until the devnet exists (issue #9/#10), the main job starts one node, lets it run for a few
# seconds and stops it with SIGTERM, checking that it exits cleanly.
run: $(VENV)/.installed
	@test -f $(RUN_DIR)/node.key || $(FLNODE) init --datadir $(RUN_DIR)
	@$(FLNODE) keys show --datadir $(RUN_DIR)
	@$(FLNODE) start --datadir $(RUN_DIR) --role device --log-format console & pid=$$!; \
	  sleep 5; kill -TERM $$pid; wait $$pid; rc=$$?; \
	  echo "flnode exited with code $$rc"; exit $$rc

test: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not slow"

test-all: $(VENV)/.installed-dev
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-storage: $(VENV)/.installed
	$(PY) -m bench.storage

bench-chain: $(VENV)/.installed
	$(PY) -m bench.chain

# Recompile the Vyper ledger contract into node/consensus/contracts/ledger.json (checked in).
contracts: $(VENV)/.installed
	$(PY) -c "from flnode.consensus.artifact import main; main()"

clean:
	rm -rf $(VENV) .run .pytest_cache
