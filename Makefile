# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9
TYPECHECK := build/typecheck

.PHONY: setup install ruff lint typecheck test suite test-all demo bench bench-api bench-policy chromium pfl-venv clean

# torch, pinned: the machine's pip configuration names a folder of wheels (find-links) that holds
# the CPU build; an index alone gives multi-GB CUDA builds. uv reads no pip configuration, so it is
# pointed at that folder and asks for the CPU build by name, in the same install as the package
# (that uv install took 2.8 s in a fresh clone on 2026-12-07; pip for torch alone ~40 s). Where
# there is no such folder or wheel, or uv fails, pip installs torch as configured, then uv (or pip)
# the rest. Bytecode is not compiled at install (uv's --compile-bytecode compiles all ~16,000
# modules: 30 s of a fresh clone's `make test`); Python compiles the ~4,000 that run on first
# import, and `make test`/`make demo` let it write them even where the environment sets
# PYTHONDONTWRITEBYTECODE (decision 119).
TORCH_VERSION := 2.13.0
FIND_LINKS = $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_INSTALL = $(BIN)/uv pip install -q --python $(BIN)/python -c constraints.txt

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)
	{ test -n "$(FIND_LINKS)" && \
	  $(UV_INSTALL) --find-links "$(FIND_LINKS)" "torch==$(TORCH_VERSION)+cpu" -e ".[dev]"; } || { \
	  echo "no CPU torch in pip's find-links folder, or uv failed (above): pip installs torch"; \
	  $(BIN)/pip install -q torch==$(TORCH_VERSION) && \
	  { $(UV_INSTALL) -e ".[dev]" || $(BIN)/pip install -q -c constraints.txt -e ".[dev]"; }; }
	touch $(STAMP)

install: $(STAMP)

ruff: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lint: ruff
	$(MAKE) typecheck

# mypy does not follow setuptools' editable-install finder, so it checks a tree of links
# that mirrors the installed package layout (fedchurn/client -> client/, ...). The tree is
# rebuilt each time (cheap); mypy's cache lives outside it, so a warm check is incremental.
typecheck: $(STAMP)
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/fedchurn
	for f in fedchurn/*; do ln -s ../../../$$f $(TYPECHECK)/fedchurn/; done
	for d in client server shared simulations; do ln -s ../../../$$d $(TYPECHECK)/fedchurn/$$d; done
	cd $(TYPECHECK) && $(NICE) ../../$(BIN)/mypy --config-file ../../pyproject.toml --cache-dir ../../.mypy_cache -p fedchurn
	cd $(TYPECHECK) && $(NICE) ../../$(BIN)/mypy --config-file ../../pyproject.toml --cache-dir ../../.mypy_cache ../../tests

# The two cores work side by side: mypy beside the suite, and the suite in two pytest-xdist workers
# (`--dist loadfile`: a module's tests stay in one worker, so its module fixtures start once; in
# the order tests/conftest.py gives, whole runs first, so the short tests fill in around them).
# mypy beside the suite runs at low priority: the suite does not keep both cores busy all the time
# (it waits on Flower's processes), so a cold check (~50 s of CPU in a fresh clone) can use what it
# leaves instead of slowing the Flower runs, whose rounds have timeouts (decision 118).
BESIDE_SUITE := nice -n 15
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder
# The suite starts hundreds of Python processes (the CLI, Flower's ServerApp and ClientApps): each
# would compile every module it imports again where the environment forbids writing bytecode.
unexport PYTHONDONTWRITEBYTECODE

# Chromium's apt install (where it is missing) beside the venv's: one waits mostly on the disk and
# the network, the other on the CPU.
setup:
	$(MAKE) --no-print-directory -j2 chromium install

test: setup
	$(MAKE) --no-print-directory ruff
	$(MAKE) --no-print-directory -j2 typecheck suite NICE="$(BESIDE_SUITE)"

suite: $(STAMP)
	$(BIN)/pytest $(PYTEST_PARALLEL) $(PYTEST_MARKS)

test-all: setup
	$(MAKE) --no-print-directory ruff
	$(MAKE) --no-print-directory -j2 typecheck PYTEST_MARKS='-m ""' suite NICE="$(BESIDE_SUITE)"

# tests/test_reviewer_page.py renders the reviewer page in headless Chromium, the Chinese page with
# a CJK font (it fails, not skips, without them).
chromium:
	@{ command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; } || { \
	  echo "installing chromium and fonts-noto-cjk for tests/test_reviewer_page.py"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk; }

bench-api: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || echo "wrk not installed (apt-get install -y wrk): falling back to httpx"
	$(BIN)/python -m fedchurn.server.api_bench --connections 100 --seconds 10

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/fedchurn demo --out results/demo

# Apple's pfl 0.6 needs dp-accounting<0.6 (the project pins 0.6.0): it gets its own venv, used
# only by `fedchurn bench`'s pfl section (simulations/pfl_bench/README.md).
PFL_VENV := simulations/pfl_bench/.venv
$(PFL_VENV)/.installed-stamp: simulations/pfl_bench/requirements.txt
	test -x $(PFL_VENV)/bin/python || $(PYTHON) -m venv $(PFL_VENV)
	$(PFL_VENV)/bin/pip install -q torch==2.13.0
	$(PFL_VENV)/bin/pip install -q -r simulations/pfl_bench/requirements.txt
	touch $@

pfl-venv: $(PFL_VENV)/.installed-stamp

bench: $(STAMP) pfl-venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/fedchurn bench

bench-policy: $(STAMP)
	$(BIN)/fedchurn bench-policy --out results/bench_policy.json

clean:
	rm -rf build results .pytest_cache .mypy_cache .ruff_cache
