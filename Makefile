# Two entry points, each doing its own set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint clean

# The venv is rebuilt only when the package metadata changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev]'
	touch $(STAMP)

# The main job on the embedded default (scikit-learn's digits + models/digits_cnn.pt), offline.
demo: $(STAMP)
	$(BIN)/compress run --out runs/demo --force

test: $(STAMP)
	$(BIN)/ruff check compress tests scripts
	$(BIN)/ruff format --check compress tests scripts
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
