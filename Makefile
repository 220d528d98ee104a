# The two commands a newcomer needs: `make run` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
FLNODE := $(VENV)/bin/flnode
DEVNET_DIR ?= .run/devnet

.PHONY: run test test-slow test-all lint bench-storage bench-chain contracts venv clean

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

# The main job: a local devnet (1 manufacturer, 4 miners, 8 devices, 1 edge; one OS process each)
# trains the default MNIST task end to end, writes report.json / report.md / accuracy.png into
# $(DEVNET_DIR), and stops. A devnet left over from an earlier (interrupted) run is replaced.
run: $(VENV)/.installed
	@$(FLNODE) devnet down --dir $(DEVNET_DIR) >/dev/null 2>&1 || true
	@rm -rf $(DEVNET_DIR)
	$(FLNODE) devnet run --dir $(DEVNET_DIR) --down
	@echo "summary: $(DEVNET_DIR)/report.md"

test: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not slow"

# The slow end-to-end tests alone (real devnets: chaos, default task, process faults; ~11 min).
test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -m slow

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
