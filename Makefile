# Two entry points, each doing its own set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# A second environment for the install check: the built wheel, on the test environment's packages.
WHEEL_VENV := build/wheel-venv

.PHONY: demo test lint install-check clean

# The venv is rebuilt only when the package metadata changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev]'
	touch $(STAMP)

# The main job on the embedded default (scikit-learn's digits + models/digits_cnn.pt), offline.
demo: $(STAMP)
	$(BIN)/compress run --out runs/demo --force

test: lint $(STAMP)
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory install-check

lint: $(STAMP)
	$(BIN)/ruff check compress tests scripts
	$(BIN)/ruff format --check compress tests scripts

# Not only the editable install works: build the wheel, install it (no dependencies) into a fresh
# environment that sees the test environment's packages through a .pth file (no second download of
# PyTorch), and run the default offline from a directory outside the source tree.
install-check: $(STAMP)
	rm -rf build/wheel dist $(WHEEL_VENV)
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir build/wheel .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
		> "$$($(WHEEL_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/test-env.pth"
	$(WHEEL_VENV)/bin/python -m pip install --quiet --no-deps --no-index build/wheel/compress-*.whl
	outer="$$(mktemp -d)" && trap 'rm -rf "$$outer"' EXIT && cd "$$outer" \
		&& "$(abspath $(WHEEL_VENV))/bin/python" -c \
			"import compress, sys; sys.exit(0 if 'wheel-venv' in compress.__file__ else 'imported ' + compress.__file__)" \
		&& "$(abspath $(WHEEL_VENV))/bin/compress" run --ratios 0.3 --criteria causal,random --random-seeds 1 \
			--latency-window-seconds 1 --out run --quiet \
		&& test -s run/model.onnx && test -s run/report.json && echo "install-check: the wheel runs the default"

clean:
	rm -rf $(VENV) build dist runs .pytest_cache .ruff_cache
