# Two commands: `make train` and `make test`. Both set up .venv first (once).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup train test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

# train the default VAE on the bundled digits; extra Hydra overrides: make train ARGS="model=conv"
train: setup
	$(BIN)/vaelab-train $(ARGS)

# the whole test suite, slow end-to-end tests included (what CI runs)
test: setup
	$(BIN)/pytest -m "slow or not slow" $(ARGS)

# the fast tests only
test-fast: setup
	$(BIN)/pytest $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
