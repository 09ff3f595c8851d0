# Two commands: `make train` and `make test`. Both set up .venv first (once).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# make notebook SWEEP=logs/train/multiruns/<sweep>: the sweep the notebook opens
SWEEP ?=

# Every install goes through the pins in constraints.txt. pip does not byte-compile
# (it compiles one file at a time: 60 of the 80 s it takes to install); compileall
# then compiles the same files on every core. Files that are not Python 3.11 (torch
# ships one of 3.12 syntax) fail to compile there as they do under pip: ignored.
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
define install
	$(PIP) --no-compile -e '$(1)'
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
endef

.PHONY: setup setup-test notebook train lint test test-fast check-lowest clean

# the package and what it needs to train, evaluate, sweep (grids, locally) and compare: the core
# install, without the extras (optuna, slurm, tensorboard, notebook: pip install -e '.[optuna]')
setup: $(VENV)/.installed
# ... and the tests' packages: every extra they exercise (Optuna, SLURM, TensorBoard), pytest, nbclient
setup-test: $(VENV)/.installed-test

# a venv with the pinned pip (Python's venv brings pip 23.2, about 45 s slower at resolving)
$(VENV)/.pip: constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) pip
	touch $@

$(VENV)/.installed: $(VENV)/.pip pyproject.toml constraints.txt
	$(call install,.)
	touch $@

# one install of the package with its test extra (not the package, then the extra)
$(VENV)/.installed-test: $(VENV)/.pip pyproject.toml constraints.txt
	$(call install,.[test])
	touch $@ $(VENV)/.installed

$(VENV)/.installed-notebook: $(VENV)/.pip pyproject.toml constraints.txt
	$(call install,.[notebook])
	touch $@ $(VENV)/.installed

# train the default VAE on the bundled digits; extra Hydra overrides: make train ARGS="model=conv"
train: setup
	$(BIN)/vaelab-train $(ARGS)

# the linter and the formatter's check (configured in pyproject.toml)
lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the linter, then the whole test suite, slow end-to-end tests included (what CI runs);
# the 25 slowest tests are listed at the end
test: lint
	$(BIN)/pytest -m "slow or not slow" --durations=25 $(ARGS)

# the fast tests only
test-fast: setup-test
	$(BIN)/pytest $(ARGS)

# the lowest versions pyproject.toml claims, in a venv of their own (VENV=/tmp/vaelab-lowest):
# the core install trains, and the fast tests pass (bench/lowest_versions.sh; minutes, not in CI)
check-lowest:
	bash bench/lowest_versions.sh $(ARGS)

# JupyterLab (the notebook extra, installed on first use) opening the sweep comparison
# notebook; SWEEP=<sweep folder> chooses its sweep, ARGS="--no-browser --port=..." etc.
notebook: $(VENV)/.installed-notebook
	$(if $(SWEEP),VAELAB_SWEEP="$(abspath $(SWEEP))") $(BIN)/jupyter lab $(ARGS) notebooks/compare_sweep.ipynb

clean:
	rm -rf $(VENV) .pytest_cache
